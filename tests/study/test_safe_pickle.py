"""The restricted reader of numpy's pickled object arrays of str: what numpy 1.x, 2.x and
Python 2 wrote reads back; anything else is refused before it can run."""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tagtune.study.data import DataError, safe_pickle
from tagtune.study.data.generic import npz_string_member, open_npz
from tagtune.study.data.safe_pickle import UnsafePickle, unpickle_strings

KEYS = ["000046_3840", "000135_483840", "é_clé", ""]


def numpy_pickle(keys: list, protocol: int = 4) -> bytes:
    """What ``np.savez`` writes after the header (numpy 2.x: protocol 4, numpy._core)."""
    a = np.empty(len(keys), dtype=object)
    a[:] = keys
    return pickle.dumps(a, protocol=protocol)


def numpy1_pickle(keys: list) -> bytes:
    """numpy 1.x's stream: protocol 3, ``_reconstruct`` from ``numpy.core.multiarray``."""
    data = numpy_pickle(keys, protocol=3)
    new = b"cnumpy._core.multiarray\n_reconstruct\n"
    assert new in data  # the edit below would silently do nothing otherwise
    return data.replace(new, b"cnumpy.core.multiarray\n_reconstruct\n")


def py2_pickle(keys: list[str]) -> bytes:
    """Python 2's numpy: protocol 2, byte strings (SHORT_BINSTRING), 0/1 ints as dtype flags."""
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b
    out = [b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02",
           s(b"b"), b"q\x03\x87q\x04Rq\x05(K\x01K", bytes([len(keys)]),
           b"\x85q\x06cnumpy\ndtype\nq\x07", s(b"O8"), b"K\x00K\x01\x87q\x08Rq\x09(K\x03",
           s(b"|"), b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tq\x0ab\x89]q\x0b("]
    out += [s(k.encode()) for k in keys]
    out.append(b"etq\x0cb.")
    return b"".join(out)


WRITERS = {"numpy 2.x": numpy_pickle, "numpy 1.x": numpy1_pickle, "python 2": py2_pickle}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writers_stream_reads_back_and_numpy_agrees(writer):
    data = WRITERS[writer](KEYS)
    assert unpickle_strings(data) == KEYS
    with warnings.catch_warnings():  # numpy 2 warns on the numpy.core name
        warnings.simplefilter("ignore", DeprecationWarning)
        real = pickle.loads(data, encoding="ASCII" if writer != "python 2" else "utf-8")
    assert real.dtype == object and real.tolist() == KEYS  # the hand-made streams are genuine


class System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


def _global(module: str, name: str) -> bytes:
    """A protocol-2 pickle calling ``module.name(marker)`` through GLOBAL + REDUCE."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x01\x00\x00\x00x\x85R."


def _refusals(marker: Path) -> dict[str, bytes]:
    array_of_floats = pickle.dumps(np.arange(3.0), protocol=4)
    zero_d = numpy_pickle(["a"], protocol=3).replace(b"K\x01\x85", b")")  # shape () for (1,)
    dotted = numpy_pickle(["a"], protocol=3).replace(b"cnumpy\nndarray\n",
                                                     b"cnumpy\nndarray.__setstate__\n")
    return {
        "os.system element": numpy_pickle(["a", System(marker)]),
        "eval element": numpy_pickle([Eval(marker), "b"]),
        "os.system whole": pickle.dumps(System(marker), protocol=2),
        "eval whole, protocol 0": pickle.dumps(Eval(marker), protocol=0),
        "subprocess": _global("subprocess", "Popen"),
        "numpy but not the rebuild": _global("numpy", "load"),
        "dotted name": dotted,
        "float array": array_of_floats,
        "bytes elements": numpy_pickle([b"a", b"b"]),
        "nested list": numpy_pickle([["a"], "b"]),
        "a plain list of str": pickle.dumps(["a", "b"], protocol=4),
        "0-d array": zero_d,
        "INST opcode": b"(ios\nsystem\nX\x01\x00\x00\x00x\x85.",
        "dict": pickle.dumps({"a": 1}, protocol=2),
        "huge memo index": b"\x80\x02]r\xff\xff\xff\x7f.",
        "persistent id": b"\x80\x02X\x01\x00\x00\x00xQ.",
        "extension code": b"\x80\x02\x82\x01.",
        "not a pickle": b"\x00\x01\x02",
        "empty": b"",
    }


@pytest.mark.parametrize("case", list(_refusals(Path("m"))))
def test_anything_else_is_refused_and_runs_nothing(tmp_path, case):
    marker = tmp_path / "pwned"
    data = _refusals(marker)[case]
    with pytest.raises((UnsafePickle, ValueError, EOFError, pickle.UnpicklingError)):
        unpickle_strings(data)
    path = tmp_path / "k.npz"
    _npz_with_member(path, "keys", _object_header(3) + data)
    with open_npz(path) as z, pytest.raises(DataError) as info:
        npz_string_member(z, path, "keys")
    assert info.value.field == "keys" and "k.npz" in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_refusal_names_what_the_pickle_named(tmp_path):
    with pytest.raises(UnsafePickle, match=r"pickle names (posix|os)\.system"):
        unpickle_strings(numpy_pickle(["a", System(tmp_path / "m")]))
    with pytest.raises(UnsafePickle, match="builtins.eval"):
        unpickle_strings(numpy_pickle([Eval(tmp_path / "m")]))
    with pytest.raises(UnsafePickle, match="opcode INST"):
        unpickle_strings(b"(ios\nsystem\nX\x01\x00\x00\x00x\x85.")
    with pytest.raises(UnsafePickle, match="'f8' is not object"):
        unpickle_strings(pickle.dumps(np.arange(3.0), protocol=4))


def _object_header(n: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False,
                                               "shape": (n,)})
    return buf.getvalue()


def _npz_with_member(path: Path, key: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{key}.npy", data)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_npz_member_reads_to_a_str_array(tmp_path, writer):
    path = tmp_path / "k.npz"
    _npz_with_member(path, "keys", _object_header(len(KEYS)) + WRITERS[writer](KEYS))
    with open_npz(path) as z:
        a = npz_string_member(z, path, "keys")
    assert a.dtype.kind == "U" and a.tolist() == KEYS


def test_header_count_and_dtype_must_match_the_pickle(tmp_path):
    path = tmp_path / "k.npz"
    _npz_with_member(path, "keys", _object_header(5) + numpy_pickle(KEYS))
    with open_npz(path) as z, pytest.raises(DataError, match="header says 5 strings, pickle holds 4"):
        npz_string_member(z, path, "keys")


def test_oversized_pickle_is_refused_before_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "k.npz"
    _npz_with_member(path, "keys", _object_header(len(KEYS)) + numpy_pickle(KEYS))
    monkeypatch.setattr(safe_pickle, "MAX_PICKLE_BYTES", 64)
    with open_npz(path) as z, pytest.raises(DataError, match="keys: pickle larger than"):
        npz_string_member(z, path, "keys")
    monkeypatch.setattr(safe_pickle, "MAX_PICKLE_BYTES", 2**20)
    monkeypatch.setattr(safe_pickle, "MAX_STRINGS_BYTES", 64)
    with open_npz(path) as z, pytest.raises(DataError, match="keys: 4 strings up to 13 long"):
        npz_string_member(z, path, "keys")
