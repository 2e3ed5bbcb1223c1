"""OpenMIC-2018 reader on a tiny release written the way the release's own script writes it
(``scripts/helper_numpy.py``: int64 X, pickled object sample_key), class map and partitions."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.study.data import DataError, load
from tagtune.study.data.openmic import read_openmic
from tests.conftest import assert_one_line_data_error

INSTRUMENTS = ["accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute",
               "guitar", "mallet_percussion", "mandolin", "organ", "piano", "saxophone",
               "synthesizer", "trombone", "trumpet", "ukulele", "violin", "voice"]
N, N_TRAIN = 30, 20


def write_release(root: Path, seed: int = 0, modern: bool = False) -> dict:
    """30 clips, 20 in split01 train and 10 in test; returns the raw arrays written.

    The npz is made as ``helper_numpy.py`` makes it: a long table of (sample_key, instrument,
    relevance) rows in pandas, ``np.unique`` over its string columns (object arrays, which
    ``np.savez`` pickles), ``X = np.empty(..., dtype=int)`` filled row by row with 0..255.
    ``modern``: uint8 X and a str key array instead (no pickle).
    """
    rng = np.random.default_rng(seed)
    clips = [f"{i * 37 + 46:06d}_{i * 3840}" for i in range(N)]
    rows = [(clips[i], name, 1.0) for i, name in enumerate(INSTRUMENTS)]  # every class occurs
    for clip in clips:
        for name in rng.choice(INSTRUMENTS, size=rng.integers(2, 8), replace=False):
            rows.append((clip, name, rng.choice([0.0, 0.2, 0.45, 0.55, 0.8, 1.0])))
    df = pd.DataFrame(rows, columns=["sample_key", "instrument", "relevance"])
    df = df.drop_duplicates(["sample_key", "instrument"]).sample(frac=1, random_state=seed)
    instruments = np.unique(df["instrument"])
    sample_key = np.unique(df["sample_key"])
    X = np.empty([len(sample_key), 10, 128], dtype=int)
    for count in range(len(sample_key)):
        X[count] = rng.integers(0, 256, size=(10, 128)).tolist()  # the VGGish JSON's lists
    Y_true = 0.5 * np.ones([len(sample_key), len(instruments)], dtype=float)
    Y_mask = np.zeros([len(sample_key), len(instruments)], dtype=bool)
    x_of, y_of = {k: i for i, k in enumerate(sample_key)}, {k: i for i, k in enumerate(instruments)}
    for row in df.itertuples():
        Y_true[x_of[row.sample_key], y_of[row.instrument]] = row.relevance
        Y_mask[x_of[row.sample_key], y_of[row.instrument]] = 1
    keys = sample_key
    if modern:
        X, keys = X.astype(np.uint8), sample_key.astype(str)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "openmic-2018.npz", X=X, Y_true=Y_true, Y_mask=Y_mask, sample_key=keys)
    # Written in reverse order: the class order must come from the indices, not the file order.
    class_map = {name: i for i, name in reversed(list(enumerate(INSTRUMENTS)))}
    (root / "class-map.json").write_text(json.dumps(class_map, indent=4))
    order = rng.permutation(N)
    (root / "partitions").mkdir(exist_ok=True)
    train, test = keys[order[:N_TRAIN]], keys[order[N_TRAIN:]]
    (root / "partitions" / "split01_train.csv").write_text("\n".join(train) + "\n")
    (root / "partitions" / "split01_test.csv").write_text("\n".join(test) + "\n")
    return {"X": X, "Y_true": Y_true, "Y_mask": Y_mask, "keys": keys, "train": train, "test": test}


@pytest.fixture
def release(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "openmic-2018"
    return root, write_release(root)


def test_shapes_scaling_labels_and_classes(release):
    root, raw = release
    ds = read_openmic(root)
    assert ds.classes == tuple(INSTRUMENTS)
    assert (ds.name, ds.observation, ds.source) == ("openmic", "partial", str(root))
    assert ds.meta == {"split": 1, "valid_fraction": 0.15, "seed": 0, "observed_ties": 0,
                       "unpartitioned_keys": 0}
    assert (ds.train.N, ds.valid.N, ds.test.N) == (17, 3, 10)  # 15% of 20 train keys
    row = {k: i for i, k in enumerate(raw["keys"])}
    for s in ds.splits.values():
        assert s.X.shape[1:] == (10, 128) and s.X.dtype == np.float32 and s.Y_full is None
        idx = [row[k] for k in s.keys]
        np.testing.assert_allclose(s.X, raw["X"][idx] / 255.0, rtol=1e-6)
        assert 0.0 <= s.X.min() and s.X.max() <= 1.0
        np.testing.assert_array_equal(s.M, raw["Y_mask"][idx])
        expected = (raw["Y_true"][idx] > 0.5) & raw["Y_mask"][idx]
        np.testing.assert_array_equal(s.Y, expected.astype(np.float32))
    # The tiny release does hold observed negatives, observed positives and unobserved entries.
    assert ds.train.Y.sum() > 0 and (ds.train.M & (ds.train.Y == 0)).sum() > 0
    assert (~ds.train.M).sum() > 0


def test_split_membership_follows_the_partition_files(release):
    root, raw = release
    ds = read_openmic(root)
    assert ds.test.keys.tolist() == raw["test"].tolist()  # file order kept
    train, valid = set(ds.train.keys), set(ds.valid.keys)
    assert not train & valid
    assert train | valid == set(raw["train"])
    in_file = [k for k in raw["train"] if k in train]
    assert ds.train.keys.tolist() == in_file


def test_validation_draw_is_seeded(release):
    root, _ = release
    a, b, c = read_openmic(root, seed=0), read_openmic(root, seed=0), read_openmic(root, seed=1)
    assert a.valid.keys.tolist() == b.valid.keys.tolist()
    assert a.fingerprint == b.fingerprint
    assert set(a.valid.keys) != set(c.valid.keys)
    assert c.meta["seed"] == 1
    d = read_openmic(root, valid_fraction=0.5)
    assert (d.train.N, d.valid.N) == (10, 10)


def test_txt_partitions_and_other_split_number(tmp_path):
    root = tmp_path / "r"
    raw = write_release(root)
    part = root / "partitions"
    (part / "split01_train.csv").rename(part / "train02.txt")
    (part / "split01_test.csv").rename(part / "test02.txt")
    ds = read_openmic(root, split=2)
    assert ds.meta["split"] == 2
    assert ds.test.keys.tolist() == raw["test"].tolist()
    with pytest.raises(DataError, match="split01_train.csv"):
        read_openmic(root, split=1)


def test_observed_tie_counts_as_present_and_is_recorded(tmp_path):
    root = tmp_path / "r"
    raw = write_release(root)
    Y_true, Y_mask = raw["Y_true"].copy(), raw["Y_mask"].copy()
    Y_mask[0, 3], Y_true[0, 3] = True, 0.5
    np.savez(root / "openmic-2018.npz", X=raw["X"], Y_true=Y_true, Y_mask=Y_mask,
             sample_key=raw["keys"])
    ds = read_openmic(root)
    assert ds.meta["observed_ties"] == 1
    key = raw["keys"][0]
    s = next(s for s in ds.splits.values() if key in set(s.keys))
    i = s.keys.tolist().index(key)
    assert s.M[i, 3] and s.Y[i, 3] == 1.0


def _resave(root: Path, raw: dict, **changes) -> None:
    arrays = {"X": raw["X"], "Y_true": raw["Y_true"], "Y_mask": raw["Y_mask"],
              "sample_key": raw["keys"]} | changes
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(root / "openmic-2018.npz", **arrays)


def _poke(a: np.ndarray, value) -> np.ndarray:
    """A copy of ``a`` with one element (not the first) set to ``value``."""
    a = a.copy()
    a.flat[a.size // 2] = value
    return a


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _raw_member(root: Path, key: str, data: bytes) -> None:
    """Rewrite the release npz with member ``key`` holding exactly ``data``."""
    path = root / "openmic-2018.npz"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[f"{key}.npy"] = data
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)


def _write_part(root: Path, name: str, keys) -> None:
    (root / "partitions" / name).write_text("\n".join(keys) + "\n")


BAD = {
    "missing npz": (lambda r, raw: (r / "openmic-2018.npz").unlink(), "openmic-2018.npz", "file"),
    "corrupt npz": (lambda r, raw: (r / "openmic-2018.npz").write_bytes(b"PK\x03\x04junk"),
                    "openmic-2018.npz", "file"),
    "missing key": (lambda r, raw: _resave(r, raw, Y_mask=None), "openmic-2018.npz", "Y_mask"),
    "X wrong rank": (lambda r, raw: _resave(r, raw, X=raw["X"].reshape(N, -1)),
                     "openmic-2018.npz", "X"),
    "X float beyond [0, 1]": (lambda r, raw: _resave(r, raw, X=raw["X"].astype(np.float32)),
                              "openmic-2018.npz", "X"),
    "X int above 255": (lambda r, raw: _resave(r, raw, X=_poke(raw["X"], 256)),
                        "openmic-2018.npz", "X"),
    "X int negative": (lambda r, raw: _resave(r, raw, X=_poke(raw["X"].astype(np.int8) // 2, -1)),
                       "openmic-2018.npz", "X"),
    "X NaN": (lambda r, raw: _resave(r, raw, X=_poke(raw["X"] / 255.0, np.nan)),
              "openmic-2018.npz", "X"),
    "X bool": (lambda r, raw: _resave(r, raw, X=raw["X"] > 100), "openmic-2018.npz", "X"),
    "X strings": (lambda r, raw: _resave(r, raw, X=raw["X"].astype(str)), "openmic-2018.npz", "X"),
    "X object": (lambda r, raw: _resave(r, raw, X=raw["X"].astype(object)), "openmic-2018.npz", "X"),
    "X not .npy": (lambda r, raw: _raw_member(r, "X", b"\x00" * 64), "openmic-2018.npz", "X"),
    "Y_true NaN": (lambda r, raw: _resave(r, raw, Y_true=np.where(raw["Y_mask"], np.nan, 0.5)),
                   "openmic-2018.npz", "Y_true"),
    "Y_mask shape": (lambda r, raw: _resave(r, raw, Y_mask=raw["Y_mask"][:, :19]),
                     "openmic-2018.npz", "Y_mask"),
    "int keys": (lambda r, raw: _resave(r, raw, sample_key=np.arange(N)), "openmic-2018.npz",
                 "sample_key"),
    "pickled int keys": (lambda r, raw: _resave(r, raw, sample_key=np.arange(N).astype(object)),
                         "openmic-2018.npz", "sample_key"),
    "pickled 2-D keys": (lambda r, raw: _resave(r, raw, sample_key=raw["keys"].reshape(3, -1)),
                         "openmic-2018.npz", "sample_key"),
    "pickled keys, one None": (lambda r, raw: _resave(r, raw, sample_key=_poke(raw["keys"], None)),
                               "openmic-2018.npz", "sample_key"),
    "keys pickle truncated": (lambda r, raw: _raw_member(r, "sample_key", _npy(raw["keys"])[:-9]),
                              "openmic-2018.npz", "sample_key"),
    "duplicate npz key": (lambda r, raw: _resave(r, raw, sample_key=np.r_[raw["keys"][:-1],
                                                                          raw["keys"][:1]]),
                          "openmic-2018.npz", "sample_key"),
    "class-map size": (lambda r, raw: (r / "class-map.json").write_text(
        json.dumps({n: i for i, n in enumerate(INSTRUMENTS[:19])})), "class-map.json",
        "class-map"),
    "class-map not JSON": (lambda r, raw: (r / "class-map.json").write_text("{accordion: 0"),
                           "class-map.json", "file"),
    "key absent from npz": (lambda r, raw: _write_part(r, "split01_train.csv",
                                                       [*raw["train"], "999999_0"]),
                            "split01_train.csv", "sample_key"),
    "empty partition": (lambda r, raw: _write_part(r, "split01_test.csv", []),
                        "split01_test.csv", "sample_key"),
    "duplicate partition key": (lambda r, raw: _write_part(r, "split01_train.csv",
                                                           [*raw["train"], raw["train"][0]]),
                                "split01_train.csv", "sample_key"),
    "train/test overlap": (lambda r, raw: _write_part(r, "split01_test.csv",
                                                      [*raw["test"], raw["train"][0]]),
                           "split01_test.csv", "sample_key"),
    "missing test partition": (lambda r, raw: (r / "partitions" / "split01_test.csv").unlink(),
                               "split01_test.csv", "file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_a_one_line_data_error(tmp_path, case):
    root = tmp_path / "r"
    raw = write_release(root)
    mutate, filename, field = BAD[case]
    mutate(root, raw)
    assert_one_line_data_error(lambda: read_openmic(root), filename, field)


def test_bad_arguments(release):
    root, _ = release
    with pytest.raises(DataError, match="valid_fraction"):
        read_openmic(root, valid_fraction=1.0)
    with pytest.raises(DataError, match="no such directory"):
        read_openmic(root / "nope")


def test_cli_convert_writes_a_file_that_loads_back_equal(release, tmp_path):
    root, _ = release
    out = tmp_path / "openmic.h5"
    result = CliRunner().invoke(app, ["data", "convert", "openmic", str(root), str(out),
                                      "--seed", "3"])
    assert result.exit_code == 0, result.output
    back, direct = load(out), read_openmic(root, seed=3)
    assert back.fingerprint == direct.fingerprint
    assert back.classes == direct.classes and back.meta == direct.meta
    for name, s in direct.splits.items():
        b = back.split(name)
        np.testing.assert_array_equal(b.X, s.X)
        np.testing.assert_array_equal(b.Y, s.Y)
        np.testing.assert_array_equal(b.M, s.M)
        assert b.keys.tolist() == s.keys.tolist()


def test_cli_convert_broken_release_exits_2_with_one_line(release, tmp_path):
    root, _ = release
    (root / "class-map.json").unlink()
    result = CliRunner().invoke(app, ["data", "convert", "openmic", str(root),
                                      str(tmp_path / "o.h5")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "class-map.json" in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "o.h5").exists()


# --- the release as its script writes it: int64 X, pickled keys, and what else is accepted ---

def test_fixture_is_what_the_release_script_writes(release):
    root, raw = release
    with np.load(root / "openmic-2018.npz") as z:
        assert z["X"].dtype == np.int64 and int(z["X"].max()) > 127
        with pytest.raises(ValueError, match="allow_pickle"):
            z["sample_key"]  # an object array: numpy refuses it without pickle
    assert raw["keys"].dtype == object


def test_release_layout_and_modern_layout_read_the_same(tmp_path):
    write_release(tmp_path / "a")
    write_release(tmp_path / "b", modern=True)
    released, modern = read_openmic(tmp_path / "a"), read_openmic(tmp_path / "b")
    assert released.fingerprint == modern.fingerprint
    for name, s in released.splits.items():
        np.testing.assert_array_equal(s.X, modern.split(name).X)
        assert s.keys.dtype.kind == "U" and s.keys.tolist() == modern.split(name).keys.tolist()


@pytest.mark.parametrize("dtype", ["<i8", ">i8", "<u2", "<i4", "<i2", "<u8", "<i1"])
def test_integer_X_of_any_width_is_scaled_like_uint8(tmp_path, dtype):
    root = tmp_path / "r"
    raw = write_release(root)
    X8 = raw["X"] // 2 if dtype == "<i1" else raw["X"]  # int8 holds 0..127 only
    _resave(root, raw, X=X8.astype(dtype))
    ds = read_openmic(root)
    _resave(root, raw, X=X8.astype(np.uint8))
    reference = read_openmic(root)
    for name, s in ds.splits.items():
        assert s.X.dtype == np.float32
        np.testing.assert_array_equal(s.X, reference.split(name).X)


def test_float_X_in_unit_interval_is_taken_as_is(tmp_path):
    root = tmp_path / "r"
    raw = write_release(root)
    X = (raw["X"] / 255.0).astype(np.float64)
    _resave(root, raw, X=np.asfortranarray(X))  # Fortran order on disk reads the same
    ds = read_openmic(root)
    row = {k: i for i, k in enumerate(raw["keys"])}
    for s in ds.splits.values():
        idx = [row[k] for k in s.keys]
        np.testing.assert_array_equal(s.X, X[idx].astype(np.float32))  # not divided again
    assert 0.9 < max(s.X.max() for s in ds.splits.values()) <= 1.0


class Touch:
    """Unpickling runs ``os.system('touch <marker>')``: proof that a pickle got executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Open:
    """Unpickling runs ``builtins.open(<marker>, 'w')``, which creates the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [Touch, Open])
@pytest.mark.parametrize("where", ["element", "whole pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, where):
    root = tmp_path / "r"
    raw = write_release(root)
    marker = tmp_path / "pwned"
    if where == "element":  # numpy pickles the array; the payload is one of its keys
        _resave(root, raw, sample_key=_poke(raw["keys"], payload(marker)))
    else:  # an object header, then a pickle that is not an array at all
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|O", "fortran_order": False, "shape": (N,)})
        _raw_member(root, "sample_key",
                    header.getvalue() + pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(DataError) as info:
        read_openmic(root)
    assert info.value.field == "sample_key" and "openmic-2018.npz" in str(info.value)
    assert "pickle names" in str(info.value)
    r = CliRunner().invoke(app, ["data", "convert", "openmic", str(root), str(tmp_path / "o.h5")])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "openmic-2018.npz" in lines[0]
    assert "sample_key" in lines[0]
    assert not marker.exists() and not (tmp_path / "o.h5").exists()
    with np.load(root / "openmic-2018.npz", allow_pickle=True) as z:  # the payload is live
        z["sample_key"]
    assert marker.exists()


def test_cli_convert_then_train_one_epoch_on_the_release(release, tmp_path):
    root, _ = release
    out = tmp_path / "openmic.h5"
    r = CliRunner().invoke(app, ["data", "convert", "openmic", str(root), str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["train", "--data", str(out), "--out", str(tmp_path / "run"),
                                 "--method", "b1", "--epochs", "1", "--batch-size", "8",
                                 "--layers", "1", "--hidden", "8", "--no-progress"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/f1_macro"] <= 1.0
