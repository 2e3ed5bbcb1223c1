"""OpenMIC-2018 (Humphrey, Durand & McFee 2018): the release directory -> :class:`Dataset`.

The release layout this reads::

    <root>/openmic-2018.npz        X (N, 10, 128) VGGish quantised to 0..255, Y_true (N, 20)
                                   float, Y_mask (N, 20) bool, sample_key (N,) strings
    <root>/class-map.json          {"accordion": 0, ..., "voice": 19}
    <root>/partitions/split01_train.csv   one sample key per line, no header
    <root>/partitions/split01_test.csv    (``train01.txt`` / ``test01.txt`` also accepted)

Labels: ``Y_true`` is 0.5 where unobserved and a crowd confidence where observed
(``Y_mask`` True). Observed confidences are binarised as the release's own
modelling baseline does, ``Y_true >= 0.5`` -> present: an observed value of
exactly 0.5 (a tied vote) counts as present. The release should not contain such
ties; their count is recorded in ``meta["observed_ties"]`` so a surprise shows.

As released, the npz is what the dataset's ``scripts/helper_numpy.py`` wrote: ``X`` is
``np.empty(..., dtype=int)`` (int64 holding 0..255) and ``sample_key`` is ``np.unique`` over a
pandas column, an object array that ``np.savez`` pickles. Integer ``X`` of any width with
values in 0..255 is scaled by 1/255; float ``X`` already in [0, 1] is taken as is. The pickle is
decoded by :mod:`safe_pickle`, which admits only numpy's rebuild of an array of str.

Validation: the paper draws 15% of the train partition; here that draw is
``numpy.random.default_rng(seed).permutation``, so it is reproducible from the
seed and the same for every method of a study.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tagtune.study.data.core import DataError, Dataset, Split, read_text_as
from tagtune.study.data.generic import NPZ_ERRORS, npz_array, npz_string_member, open_npz
from tagtune.study.data.safe_pickle import open_member
from tagtune.study.errors import first_line

NPZ = "openmic-2018.npz"
CLASS_MAP = "class-map.json"
PARTITIONS = "partitions"


def read_openmic(root: str | Path, split: int = 1, valid_fraction: float = 0.15,
                 seed: int = 0) -> Dataset:
    """Read an OpenMIC-2018 release directory; any malformed input raises :class:`DataError`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "root", "no such directory")
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(root, "valid_fraction", f"must be in (0, 1), got {valid_fraction}")
    X, Y_true, Y_mask, keys = _read_npz(root / NPZ)
    classes = _read_class_map(root / CLASS_MAP, Y_true.shape[1])

    # Binarise observed confidences (>= 0.5, the release baseline's rule); Split zeroes the rest.
    Y = (Y_true >= 0.5).astype(np.float32)
    ties = int(np.count_nonzero(Y_mask & (Y_true == 0.5)))

    train_path, test_path = _partition_paths(root, split)
    row = {k: i for i, k in enumerate(keys.tolist())}
    train_idx = _read_partition(train_path, row, NPZ)
    test_idx = _read_partition(test_path, row, NPZ)
    both = np.intersect1d(train_idx, test_idx)
    if both.size:
        raise DataError(test_path, "sample_key",
                        f"{both.size} keys also in the train partition, e.g. {keys[both[0]]!r}")

    n_valid = int(round(valid_fraction * train_idx.size))
    n_valid = min(max(n_valid, 1), train_idx.size - 1)
    if n_valid < 1:
        raise DataError(train_path, "sample_key", "too few train keys to draw a validation set")
    chosen = np.zeros(train_idx.size, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(train_idx.size)[:n_valid]] = True
    # Both parts keep the partition file's order: the permutation only picks members.
    parts = {"train": train_idx[~chosen], "valid": train_idx[chosen], "test": test_idx}

    splits = {
        name: Split(_scaled(X, idx), Y[idx], Y_mask[idx], keys[idx], where=f"{root}:{name}")
        for name, idx in parts.items()
    }
    unused = keys.size - train_idx.size - test_idx.size
    return Dataset(
        **splits,
        classes=classes,
        name="openmic",
        source=str(root),
        observation="partial",
        meta={"split": split, "valid_fraction": valid_fraction, "seed": seed,
              "observed_ties": ties, "unpartitioned_keys": int(unused)},
    )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(path, "file", "no such file")
    z = open_npz(path)
    try:
        with z:
            for k in ("X", "Y_true", "Y_mask", "sample_key"):
                if k not in z.files:
                    raise DataError(path, k, "missing array")
            X = _read_X(path, z)
            Y_true, Y_mask = npz_array(z, path, "Y_true"), npz_array(z, path, "Y_mask")
            keys = npz_string_member(z, path, "sample_key")
    except DataError:
        raise
    except NPZ_ERRORS as e:
        raise DataError(path, "file", f"corrupt .npz ({first_line(e, 120)})") from e

    N = X.shape[0]
    if Y_true.dtype.kind not in "iuf":
        raise DataError(path, "Y_true", f"expected numeric confidences, got dtype {Y_true.dtype}")
    if Y_true.ndim != 2 or Y_true.shape[0] != N:
        raise DataError(path, "Y_true", f"expected shape ({N}, C), got {Y_true.shape}")
    if not np.isfinite(Y_true).all():
        raise DataError(path, "Y_true", "contains NaN or inf")
    if Y_true.size and (Y_true.min() < 0 or Y_true.max() > 1):
        raise DataError(path, "Y_true", "confidences outside [0, 1]")
    if Y_mask.shape != Y_true.shape:
        raise DataError(path, "Y_mask", f"expected shape {Y_true.shape}, got {Y_mask.shape}")
    if Y_mask.dtype != bool:
        if Y_mask.dtype.kind not in "iuf" or not np.isin(Y_mask, (0, 1)).all():
            raise DataError(path, "Y_mask", f"expected a boolean mask, got dtype {Y_mask.dtype}")
        Y_mask = Y_mask.astype(bool)
    if keys.shape != (N,):
        raise DataError(path, "sample_key", f"expected ({N},) strings, got {keys.shape}")
    uniq, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        raise DataError(path, "sample_key", f"duplicate key {str(uniq[counts > 1][0])!r}")
    return X, Y_true, Y_mask, keys


def _read_X(path: Path, z) -> np.ndarray:
    """X as uint8 (integers 0..255, any width) or float32 (floats in [0, 1]).

    Read in chunks straight into the narrow array: the release's int64 X (20,000 x 10 x 128,
    200 MB) never sits in memory whole, only its 25 MB uint8 copy does.
    """
    with open_member(path, z, "X") as (fp, shape, fortran, dtype):
        if dtype.kind not in "iuf":  # structured dtypes are kind "V"
            raise DataError(path, "X", f"expected integer (0..255) or float features, got {dtype}")
        if len(shape) != 3 or 0 in shape:
            raise DataError(path, "X", f"expected shape (N, T, F), got {shape}")
        out = np.empty(int(np.prod(shape)), np.float32 if dtype.kind == "f" else np.uint8)
        step = 2**20 // dtype.itemsize
        for i in range(0, out.size, step):
            n = min(step, out.size - i)
            data = fp.read(n * dtype.itemsize)
            if len(data) != n * dtype.itemsize:
                raise DataError(path, "X", "member shorter than its header says")
            a = np.frombuffer(data, dtype)
            if dtype.kind == "f":
                if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
                    raise DataError(path, "X", "float features must be finite and in [0, 1] "
                                               "(quantised 0..255 values belong in an integer X)")
            elif dtype != np.uint8 and (a.min() < 0 or a.max() > 255):
                bad = a[(a < 0) | (a > 255)][0]
                raise DataError(path, "X", f"integer features must be in 0..255, found {bad}")
            out[i:i + n] = a
    return out.reshape(shape, order="F" if fortran else "C")


def _scaled(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of X as float32 in [0, 1]: uint8 / 255 in one pass, floats as they are."""
    if X.dtype == np.uint8:
        return np.divide(X[idx], 255.0, dtype=np.float32)
    return X[idx]


def _read_class_map(path: Path, C: int) -> tuple[str, ...]:
    """Class names ordered by their column index in ``Y_true``."""
    mapping = read_text_as(path, json.loads, "readable JSON", (json.JSONDecodeError,))
    if not isinstance(mapping, dict):
        raise DataError(path, "class-map", "expected an object {instrument: column index}")
    if len(mapping) != C:
        raise DataError(path, "class-map", f"{len(mapping)} instruments but Y_true has {C} columns")
    index = {}
    for name, i in mapping.items():
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < C:
            raise DataError(path, name, f"column index must be an integer in [0, {C}), got {i!r}")
        if i in index:
            raise DataError(path, name, f"column {i} already taken by {index[i]!r}")
        index[i] = name
    return tuple(index[i] for i in range(C))


def _partition_paths(root: Path, split: int) -> tuple[Path, Path]:
    d = root / PARTITIONS
    for train, test in ((f"split{split:02d}_train.csv", f"split{split:02d}_test.csv"),
                        (f"train{split:02d}.txt", f"test{split:02d}.txt")):
        if (d / train).is_file() or (d / test).is_file():
            for p in (d / train, d / test):
                if not p.is_file():
                    raise DataError(p, "file", "no such file")
            return d / train, d / test
    raise DataError(d / f"split{split:02d}_train.csv", "file",
                    f"no such file (nor train{split:02d}.txt)")


def _read_partition(path: Path, row: dict[str, int], npz_name: str) -> np.ndarray:
    """Rows of the npz named by one partition file, in the file's order."""
    lines = read_text_as(path, str.splitlines, "readable text")
    keys = [s.strip() for s in lines if s.strip()]
    if not keys:
        raise DataError(path, "sample_key", "empty partition")
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise DataError(path, "sample_key", f"duplicate key {dup!r}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(path, "sample_key",
                        f"{len(missing)} keys not in {npz_name}, e.g. {missing[0]!r}")
    return np.array([row[k] for k in keys], dtype=np.int64)
