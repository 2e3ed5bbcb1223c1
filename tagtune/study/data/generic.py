"""The generic file: tagtune's own format, what users bring their data in and converters write.

HDF5 (``.h5``/``.hdf5``)::

    /            attrs: format = "tagtune-1", name, source, observation, meta (JSON)
    /classes     (C,) UTF-8 strings
    /train       group with X (N, T, F) float, Y (N, C) 0/1, M (N, C) bool,
    /valid         keys (N,) UTF-8 strings, optional Y_full (N, C) 0/1
    /test

NPZ (``.npz``): the same arrays flat as ``train_X``, ``train_Y`` ..., ``classes``,
and optional ``name``, ``observation``, ``meta`` (JSON) scalars. Read with
``allow_pickle=False``; the one pickle accepted is numpy's of a 1-D object array of str for
``classes`` and ``*_keys``, decoded by :mod:`safe_pickle`, which runs nothing a pickle names.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np

from tagtune.study import atomic
from tagtune.study.data.core import SPLITS, DataError, Dataset, Split
from tagtune.study.data.safe_pickle import open_member, read_pickled_strings
from tagtune.study.errors import first_line

FORMAT = "tagtune-1"
ARRAYS = ("X", "Y", "M", "keys", "Y_full")
REQUIRED = ("X", "Y", "M", "keys")
H5_SUFFIXES = (".h5", ".hdf5")
# What a damaged archive can raise from zipfile, zlib and numpy's .npy parser.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError,
              OverflowError, MemoryError, zipfile.BadZipFile, zlib.error, struct.error)


def save(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` to ``path`` (.h5/.hdf5 or .npz), atomically (a temp file then rename)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*H5_SUFFIXES, ".npz"):
        raise DataError(path, "path", "unknown extension (use .h5, .hdf5 or .npz)")
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if suffix in H5_SUFFIXES:
            _save_h5(ds, tmp)
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **_flat(ds))
        atomic.fsync_file(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no half file behind
    return path


def _save_h5(ds: Dataset, path: Path) -> None:
    strings = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.attrs.update(format=FORMAT, name=ds.name, source=ds.source, observation=ds.observation)
        f.attrs["meta"] = json.dumps(ds.meta)
        f.create_dataset("classes", data=np.array(ds.classes, dtype=object), dtype=strings)
        for name, s in ds.splits.items():
            g = f.create_group(name)
            g.create_dataset("X", data=s.X)
            g.create_dataset("Y", data=s.Y.astype(np.uint8))
            g.create_dataset("M", data=s.M)
            g.create_dataset("keys", data=s.keys.astype(object), dtype=strings)
            if s.Y_full is not None:
                g.create_dataset("Y_full", data=s.Y_full.astype(np.uint8))


def _flat(ds: Dataset) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "classes": np.array(ds.classes),
        "name": np.array(ds.name),
        "observation": np.array(ds.observation),
        "meta": np.array(json.dumps(ds.meta)),
    }
    for name, s in ds.splits.items():
        out |= {f"{name}_X": s.X, f"{name}_Y": s.Y.astype(np.uint8), f"{name}_M": s.M}
        out[f"{name}_keys"] = s.keys
        if s.Y_full is not None:
            out[f"{name}_Y_full"] = s.Y_full.astype(np.uint8)
    return out


def load(path: str | Path) -> Dataset:
    """Read a generic file; any malformed content raises :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "path", "not a regular file" if path.exists() else "no such file")
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        return _load_h5(path)
    if suffix == ".npz":
        return _load_npz(path)
    raise DataError(path, "path", "unknown extension (use .h5, .hdf5 or .npz)")


def _load_h5(path: Path) -> Dataset:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, "file", f"not a readable HDF5 file ({first_line(e, 120)})") from e
    try:
        with f:
            attrs = {k: _attr_str(path, k, v) for k, v in f.attrs.items()}
            if attrs.get("format", FORMAT) != FORMAT:
                raise DataError(path, "format", f"{attrs['format']!r} is not {FORMAT!r}")
            classes = _read_strings(f, "classes", path)
            arrays = {}
            for name in SPLITS:
                g = f.get(name)
                if g is None:
                    raise DataError(path, f"/{name}", "missing split group")
                if not isinstance(g, h5py.Group):
                    raise DataError(path, f"/{name}", "expected a split group, found a dataset")
                arrays[name] = {k: _read_h5_array(g, k, path) for k in ARRAYS}
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, OverflowError) as e:
        raise DataError(path, "file", f"corrupt or unreadable HDF5 ({first_line(e, 120)})") from e
    return _assemble(path, arrays, classes, attrs)


def _attr_str(path: Path, key: str, value) -> str:
    """Root attributes are text; h5py returns str, but other writers may leave bytes."""
    if isinstance(value, bytes | np.bytes_):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, f"attribute {key}", "not valid UTF-8") from e
    if isinstance(value, str):
        return value
    raise DataError(path, f"attribute {key}", f"expected a string, got {type(value).__name__}")


def _read_h5_array(g: h5py.Group, key: str, path: Path) -> np.ndarray | None:
    where = f"{g.name}/{key}"
    if key not in g:
        if key in REQUIRED:
            raise DataError(path, where, "missing dataset")
        return None
    d = g[key]
    if not isinstance(d, h5py.Dataset):
        raise DataError(path, where, "expected a dataset, found a group")
    if key == "keys":
        return _read_strings(g, key, path)
    if d.dtype.kind not in "biuf":
        raise DataError(path, where, f"expected a numeric dataset, got dtype {d.dtype}")
    return d[()]


def _read_strings(g: h5py.Group, key: str, path: Path) -> np.ndarray:
    where = f"{g.name.rstrip('/')}/{key}"
    if key not in g:
        raise DataError(path, where, "missing dataset")
    d = g[key]
    if not isinstance(d, h5py.Dataset):
        raise DataError(path, where, "expected a dataset, found a group")
    if d.dtype.kind == "O" and h5py.check_string_dtype(d.dtype) is None:
        raise DataError(path, where, "expected strings")
    if d.dtype.kind not in "OSU":
        raise DataError(path, where, f"expected strings, got dtype {d.dtype}")
    try:
        values = d.asstr()[()] if d.dtype.kind != "U" else d[()]
    except (UnicodeDecodeError, TypeError, ValueError) as e:
        raise DataError(path, where, "strings are not valid UTF-8") from e
    values = np.asarray(values)
    if values.ndim != 1:
        raise DataError(path, where, f"expected a 1-D list of strings, got shape {values.shape}")
    return values.astype(str)


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """Open an .npz without pickle; anything but a readable archive is a DataError."""
    try:
        # Checked first so that np.load never tries its .npy or pickle branches on random bytes.
        if not zipfile.is_zipfile(path):
            raise DataError(path, "file", "not a zip archive (an .npz is one)")
        z = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except NPZ_ERRORS as e:
        raise DataError(path, "file", f"not a readable .npz ({first_line(e, 120)})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(path, "file", "a single .npy array, not an .npz archive")
    return z


def _load_npz(path: Path) -> Dataset:
    z = open_npz(path)
    try:
        with z:
            classes = npz_string_member(z, path, "classes")
            attrs = {k: _npz_text(path, k, npz_array(z, path, k))
                     for k in ("name", "observation", "meta") if k in z.files}
            arrays = {
                name: {k: npz_string_member(z, path, f"{name}_keys") if k == "keys"
                       else npz_array(z, path, f"{name}_{k}", required=k in REQUIRED)
                       for k in ARRAYS}
                for name in SPLITS
            }
    except DataError:
        raise
    except NPZ_ERRORS as e:
        raise DataError(path, "file", f"corrupt .npz ({first_line(e, 120)})") from e
    return _assemble(path, arrays, classes, attrs)


def npz_string_member(z: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    """A required 1-D str member (class names, clip keys), stored as a str/bytes array or as
    numpy's pickle of an object array of str (what ``np.savez`` makes of pandas strings)."""
    if key not in z.files:
        raise DataError(path, key, "missing array")
    with open_member(path, z, key) as (fp, shape, _, dtype):
        if dtype.hasobject:
            return read_pickled_strings(path, key, fp, shape, dtype)
    return npz_strings(path, key, npz_array(z, path, key))


def npz_strings(path: Path, key: str, a: np.ndarray) -> np.ndarray:
    """A 1-D array of str (bytes are decoded as UTF-8): class names and clip keys."""
    if a.dtype.kind not in "US" or a.ndim != 1:
        raise DataError(path, key, f"expected a 1-D array of strings, got {a.dtype} {a.shape}")
    if a.dtype.kind == "S":
        try:
            return np.char.decode(a, "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, key, "strings are not valid UTF-8") from e
    return a


def _npz_text(path: Path, key: str, a: np.ndarray) -> str:
    """A scalar string (name, observation, meta JSON)."""
    if a.dtype.kind not in "US" or a.ndim != 0:
        raise DataError(path, key, f"expected a scalar string, got {a.dtype} {a.shape}")
    return npz_strings(path, key, a.reshape(1))[0].item()


def npz_array(z: np.lib.npyio.NpzFile, path: Path, key: str, required: bool = True) -> np.ndarray | None:
    """Member ``key`` of an open .npz, loaded without pickle (None where it is absent and not
    ``required``); a DataError naming the member where it is no array."""
    if key not in z.files:
        if required:
            raise DataError(path, key, "missing array")
        return None
    try:
        a = z[key]
    except ValueError as e:  # object arrays refuse to load without pickle
        raise DataError(path, key, f"cannot load ({first_line(e, 120)})") from e
    if not isinstance(a, np.ndarray):  # a member without the .npy header comes back as bytes
        raise DataError(path, key, "not a .npy array")
    return a


def _assemble(path: Path, arrays: dict, classes: np.ndarray, attrs: dict) -> Dataset:
    try:
        meta = json.loads(attrs.get("meta", "{}"))
    except (ValueError, TypeError, RecursionError) as e:
        raise DataError(path, "meta", "not valid JSON") from e
    if not isinstance(meta, dict):
        raise DataError(path, "meta", "expected a JSON object")
    # Each label array against the class names, before Split compares them with each other: a
    # Y of the wrong width is then named as Y (Split alone could only say M differs from Y).
    for name, a in arrays.items():
        for key in ("Y", "M", "Y_full"):
            shape = np.shape(a[key]) if a[key] is not None else None
            if shape is not None and len(shape) == 2 and shape[1] != len(classes):
                raise DataError(f"{path}:/{name}", key, f"expected {len(classes)} columns (one per "
                                f"class name), got shape {tuple(shape)}")
    splits = {
        name: Split(a["X"], a["Y"], a["M"], a["keys"], a["Y_full"], where=f"{path}:/{name}")
        for name, a in arrays.items()
    }
    return Dataset(
        **splits,
        classes=tuple(classes.tolist()),
        name=str(attrs.get("name", path.stem)),
        source=str(path),
        observation=str(attrs.get("observation", "partial")),
        meta=meta,
    )
