"""Read numpy's pickle of a 1-D object array of ``str`` without running anything a pickle names.

``np.savez`` stores an object array (OpenMIC-2018's ``sample_key``, ``np.unique`` over a pandas
column of strings) as a pickle after the ``.npy`` header. ``np.load(allow_pickle=True)`` would
run whatever that pickle names; this reader never does. Three gates, each enough on its own to
stop ``os.system``:

1. the opcode stream is scanned first (``pickletools.genops`` parses, it executes nothing):
   only the opcodes numpy's array pickles use are admitted (no ``INST``/``OBJ``/``NEWOBJ``,
   no extension registry, no persistent ids, no dicts), and memo indices stay small (CPython
   sizes its memo table by the largest index a ``PUT`` names);
2. :class:`_Unpickler.find_class` admits exactly numpy's array rebuild -- ``_reconstruct``
   (``numpy.core.multiarray`` as numpy 1.x and Python 2 wrote it, ``numpy._core.multiarray`` as
   numpy 2.x writes it), ``numpy.ndarray`` and ``numpy.dtype`` -- and hands back local stand-ins,
   not numpy's objects, so not even numpy's own ``__setstate__`` sees the untrusted state;
3. the stand-ins accept only an object dtype and a 1-D list state, and every element must be a
   ``str``.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from tagtune.study.data.core import DataError
from tagtune.study.errors import first_line

MAX_PICKLE_BYTES = 256 * 2**20
"""Largest pickled member read (OpenMIC's 20,000 keys pickle to about 0.4 MB)."""
MAX_STRINGS_BYTES = 2**30
"""Largest fixed-width str array built from it (N x longest string x 4 bytes)."""

# Everything numpy's object-array pickles use, protocols 0-4 (Python 2 wrote 2, numpy 1.x 3,
# numpy 2.x 4); strings of Python 2 (STRING/BINSTRING) decode as UTF-8.
_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
    "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND",
    "APPENDS",
})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class UnsafePickle(pickle.UnpicklingError):
    """The pickle is something other than numpy's array of str; the message says what."""


class _Name:
    """What ``numpy.ndarray`` resolves to: a marker that can only be passed to _reconstruct."""


_NDARRAY = _Name()


class _Dtype:
    """Stand-in for ``numpy.dtype('O')``: accepts only an object dtype's state."""

    built = False

    def __setstate__(self, state) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, align,
        # flags[, metadata]); an object dtype has no subarray, names or fields.
        if not (isinstance(state, tuple) and 8 <= len(state) <= 9 and state[1] in ("|", b"|")
                and state[2] is None and state[3] is None and state[4] is None):
            raise UnsafePickle("dtype state is not a plain object dtype's")
        self.built = True


class _Array:
    """Stand-in for the object ndarray: keeps the element list of a 1-D state."""

    values: list | None = None

    def __setstate__(self, state) -> None:
        # numpy's ndarray state: ([version,] shape, dtype, is_fortran, data); data is a list
        # of the elements for object arrays.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickle("array state is not numpy's")
        shape, dtype, _, data = state[-4:]
        if not (isinstance(dtype, _Dtype) and dtype.built):
            raise UnsafePickle("array dtype is not object")
        if not (isinstance(shape, tuple) and len(shape) == 1 and type(shape[0]) is int):
            raise UnsafePickle(f"array shape {shape!r:.40} is not 1-D")
        if type(data) is not list or len(data) != shape[0]:
            raise UnsafePickle("array data is not a list of its elements")
        self.values = data


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY or shape != (0,) or typecode not in ("b", b"b"):
        raise UnsafePickle("_reconstruct called with arguments numpy never writes")
    return _Array()


def _dtype(spec, *flags):
    if spec not in ("O", "O4", "O8", b"O", b"O4", b"O8") or len(flags) > 2:
        raise UnsafePickle(f"dtype {spec!r:.20} is not object (only arrays of str are read)")
    if not all(type(f) in (bool, int) for f in flags):
        raise UnsafePickle("dtype flags are not numpy's")
    return _Dtype()


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x, Python 2
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2.x
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Called with the names as written (no Python 2 renaming: that is the base class's job).
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickle(f"pickle names {module!s:.60}.{name!s:.60}; only numpy's rebuild "
                               "of an array of str is read")
        return found


def _scan(data: bytes) -> None:
    """Refuse any opcode outside :data:`_OPCODES` and any outsized memo index, executing nothing."""
    for n, (op, arg, _) in enumerate(pickletools.genops(data)):
        if op.name not in _OPCODES:
            raise UnsafePickle(f"pickle opcode {op.name} is not used by numpy's array pickles")
        if op.name in _PUTS and arg > n:
            raise UnsafePickle(f"pickle memo index {arg} out of range")


def unpickle_strings(data: bytes) -> list[str]:
    """The elements of numpy's pickle of a 1-D object array of str; :class:`UnsafePickle` else."""
    _scan(data)
    obj = _Unpickler(io.BytesIO(data), fix_imports=False, encoding="utf-8").load()
    if not isinstance(obj, _Array) or obj.values is None:
        raise UnsafePickle("pickle is not numpy's rebuild of an array")
    for v in obj.values:
        if type(v) is not str:
            raise UnsafePickle(f"element of type {type(v).__name__:.40} (only str is read)")
    return obj.values


@contextmanager
def open_member(path: Path, z: np.lib.npyio.NpzFile, key: str
                ) -> Iterator[tuple[IO[bytes], tuple[int, ...], bool, np.dtype]]:
    """The ``.npy`` member ``key`` of an open .npz, read past its header:
    ``(file, shape, fortran_order, dtype)``."""
    names = set(z.zip.namelist())
    if f"{key}.npy" not in names:
        raise DataError(path, key, "not a .npy array" if key in names else "missing array")
    with z.zip.open(f"{key}.npy") as fp:
        try:
            version = npy_format.read_magic(fp)
            if version == (1, 0):
                header = npy_format.read_array_header_1_0(fp)
            elif version == (2, 0):
                header = npy_format.read_array_header_2_0(fp)
            else:
                raise DataError(path, key, f"unsupported .npy format version {version}")
        except (ValueError, SyntaxError, TypeError) as e:
            raise DataError(path, key, f"bad .npy header ({first_line(e, 100, named=True)})") from e
        yield fp, *header


def read_pickled_strings(path: Path, key: str, fp: IO[bytes], shape: tuple[int, ...],
                         dtype: np.dtype) -> np.ndarray:
    """The 1-D str array pickled in a member whose header ``open_member`` has just read."""
    if dtype != np.dtype(object):
        raise DataError(path, key, f"expected a pickled object array, the header says {dtype}")
    if len(shape) != 1:
        raise DataError(path, key, f"expected a 1-D array of strings, got shape {shape}")
    data = fp.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise DataError(path, key, f"pickle larger than {MAX_PICKLE_BYTES >> 20} MiB")
    try:
        values = unpickle_strings(data)
    except UnsafePickle as e:
        raise DataError(path, key, str(e)) from e
    except Exception as e:  # noqa: BLE001 -- a malformed stream can raise almost any builtin
        # error (EOFError, TypeError, IndexError, UnicodeDecodeError, ...); nothing foreign ran.
        problem = first_line(e, 100, named=True)
        raise DataError(path, key, f"not a readable pickle of strings ({problem})") from e
    if len(values) != shape[0]:
        raise DataError(path, key, f"header says {shape[0]} strings, pickle holds {len(values)}")
    width = max(map(len, values), default=0) or 1
    if len(values) * width * 4 > MAX_STRINGS_BYTES:
        raise DataError(path, key, f"{len(values)} strings up to {width} long exceed "
                                   f"{MAX_STRINGS_BYTES >> 20} MiB as a str array")
    return np.array(values, dtype=f"<U{width}")
