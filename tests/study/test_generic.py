"""The generic file (.h5/.npz): exact round trips, one-line errors on bad files, and
``tagtune data describe`` on top of it."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.study.data import DataError, Dataset, load, save
from tagtune.study.data.describe import class_table, split_table
from tests.conftest import make_split


def dataset(full: bool = True) -> Dataset:
    rng = np.random.default_rng(3)
    return Dataset(
        train=make_split(rng, 30, prefix="tr", full=full),
        valid=make_split(rng, 8, prefix="va", full=full),
        test=make_split(rng, 9, prefix="té", full=full),  # non-ASCII keys survive too
        classes=("accordion", "banjo", "cello"), name="rt", source="memory",
        observation="complete" if full else "partial", meta={"seed": 3, "p": [0.1, None]},
    )


@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".npz", ".H5"])
@pytest.mark.parametrize("full", [True, False])
def test_round_trip_is_exact(tmp_path, suffix, full):
    ds = dataset(full)
    path = save(ds, tmp_path / f"sub/rt{suffix}")
    again = load(path)
    assert (again.name, again.observation, again.meta, again.classes) == (
        ds.name, ds.observation, ds.meta, ds.classes)
    assert again.source == str(path) and not list(path.parent.glob("*.tmp"))
    for name, s in ds.splits.items():
        a = again.split(name)
        for field in ("X", "Y", "M", "keys"):
            x, y = getattr(s, field), getattr(a, field)
            assert x.dtype == y.dtype and np.array_equal(x, y), (name, field)
        assert (a.Y_full is None) == (not full)
        if full:
            assert a.Y_full.dtype == np.float32 and np.array_equal(a.Y_full, s.Y_full)


def test_save_refuses_unknown_extension_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="extension"):
        save(dataset(), tmp_path / "d.csv")
    assert list(tmp_path.iterdir()) == []


# --- bad files: each builder writes one into tmp and returns (path, field the error names) ---

def good(tmp: Path, suffix: str) -> Path:
    return save(dataset(), tmp / f"good{suffix}")


def h5_edit(tmp: Path, edit) -> Path:
    path = good(tmp, ".h5")
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def replace_h5(where: str, data) -> callable:
    def edit(f):
        del f[where]
        f[where] = data
    return edit


def truncated(tmp: Path, suffix: str, keep: float) -> Path:
    path = good(tmp, suffix)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def raw(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def npz_with(tmp: Path, **changes) -> Path:
    """The good .npz with arrays replaced (value) or removed (None)."""
    z = dict(np.load(good(tmp, ".npz")))
    for k, v in changes.items():
        if v is None:
            del z[k]
        else:
            z[k] = v
    path = tmp / "bad.npz"
    np.savez(path, **z)
    return path


def npz_raw_member(tmp: Path) -> Path:
    """`classes` as a zip member without the .npy header: numpy hands back bytes."""
    path = tmp / "bad.npz"
    with zipfile.ZipFile(path, "w") as out, np.load(good(tmp, ".npz")) as z:
        for k in z.files:
            buf = io.BytesIO()
            np.save(buf, z[k])
            out.writestr(k if k == "classes" else f"{k}.npy",
                         b"accordion banjo cello" if k == "classes" else buf.getvalue())
    return path


def npz_corrupt_deflate(tmp: Path) -> Path:
    z = dict(np.load(good(tmp, ".npz")))
    path = tmp / "bad.npz"
    np.savez_compressed(path, **z)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 2, 97):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def npy_as_npz(tmp: Path) -> Path:
    with open(tmp / "bad.npz", "wb") as f:
        np.save(f, np.zeros(3))
    return tmp / "bad.npz"


RANDOM = np.random.default_rng(0).bytes(4096)

BAD = {
    "missing file": (lambda t: t / "nope.h5", "path"),
    "wrong extension": (lambda t: good(t, ".h5").rename(t / "good.txt"), "path"),
    "directory": (lambda t: (t / "dir.h5").mkdir() or t / "dir.h5", "path"),
    "h5 empty": (lambda t: raw(t, "e.h5", b""), "file"),
    "h5 random bytes": (lambda t: raw(t, "r.h5", RANDOM), "file"),
    "h5 truncated to half": (lambda t: truncated(t, ".h5", 0.5), "file"),
    "h5 truncated to 1%": (lambda t: truncated(t, ".h5", 0.01), "file"),
    "h5 missing group": (lambda t: h5_edit(t, lambda f: f.__delitem__("valid")), "/valid"),
    "h5 split is a dataset": (lambda t: h5_edit(t, replace_h5("test", np.zeros(3))), "/test"),
    "h5 missing dataset": (lambda t: h5_edit(t, lambda f: f.__delitem__("train/M")), "/train/M"),
    "h5 missing classes": (lambda t: h5_edit(t, lambda f: f.__delitem__("classes")), "/classes"),
    "h5 group for dataset": (
        lambda t: h5_edit(t, lambda f: (f.__delitem__("train/X"), f.create_group("train/X"))),
        "/train/X"),
    "h5 group for classes": (
        lambda t: h5_edit(t, lambda f: (f.__delitem__("classes"), f.create_group("classes"))),
        "/classes"),
    "h5 non-numeric X": (
        lambda t: h5_edit(t, replace_h5("train/X", np.array([b"a"] * 30))), "/train/X"),
    "h5 keys not strings": (lambda t: h5_edit(t, replace_h5("test/keys", np.arange(9))),
                            "/test/keys"),
    "h5 classes not strings": (lambda t: h5_edit(t, replace_h5("classes", np.arange(3.0))),
                               "/classes"),
    "h5 keys bad utf-8": (
        lambda t: h5_edit(t, replace_h5("valid/keys", np.array([b"\xff%d" % i for i in range(8)]))),
        "/valid/keys"),
    "h5 bad meta JSON": (lambda t: h5_edit(t, lambda f: f.attrs.__setitem__("meta", "{oops")),
                         "meta"),
    "h5 meta not an object": (lambda t: h5_edit(t, lambda f: f.attrs.__setitem__("meta", "[1]")),
                              "meta"),
    "h5 name not text": (lambda t: h5_edit(t, lambda f: f.attrs.__setitem__("name", 7)), "name"),
    "h5 other format": (
        lambda t: h5_edit(t, lambda f: f.attrs.__setitem__("format", "tagtune-9")), "format"),
    "h5 bad observation": (
        lambda t: h5_edit(t, lambda f: f.attrs.__setitem__("observation", "some")), "observation"),
    "h5 mask of 2s": (lambda t: h5_edit(t, replace_h5("train/M", np.full((30, 3), 2, np.uint8))),
                      "M"),
    "h5 observed label 2": (
        lambda t: h5_edit(t, replace_h5("test/Y", np.full((9, 3), 2, np.uint8))), "Y"),
    "h5 NaN features": (
        lambda t: h5_edit(t, replace_h5("valid/X", np.full((8, 4, 6), np.nan, np.float32))), "X"),
    "h5 F differs": (
        lambda t: h5_edit(t, replace_h5("valid/X", np.zeros((8, 4, 5), np.float32))), "X"),
    "h5 one class name short": (
        lambda t: h5_edit(t, replace_h5("classes", np.array([b"a", b"b"]))), "Y"),
    "h5 duplicate keys": (
        lambda t: h5_edit(t, replace_h5("train/keys", np.array([b"k"] * 30))), "keys"),
    "npz empty": (lambda t: raw(t, "e.npz", b""), "file"),
    "npz random bytes": (lambda t: raw(t, "r.npz", RANDOM), "file"),
    "npz zip magic then noise": (lambda t: raw(t, "z.npz", b"PK\x03\x04" + RANDOM), "file"),
    "npz truncated": (lambda t: truncated(t, ".npz", 0.6), "file"),
    "npz corrupt deflate": (npz_corrupt_deflate, "file"),
    "npz single .npy": (npy_as_npz, "file"),
    "npz missing array": (lambda t: npz_with(t, test_Y=None), "test_Y"),
    "npz missing classes": (lambda t: npz_with(t, classes=None), "classes"),
    "npz member not .npy": (npz_raw_member, "classes"),
    "npz bad meta JSON": (lambda t: npz_with(t, meta=np.array("{'single': 'quotes'}")), "meta"),
    "npz deep meta JSON": (lambda t: npz_with(t, meta=np.array("[" * 100_000)), "meta"),
    "npz name not scalar": (lambda t: npz_with(t, name=np.array([1, 2])), "name"),
    "npz keys not strings": (lambda t: npz_with(t, valid_keys=np.arange(8)), "valid_keys"),
    "npz classes bad utf-8": (
        lambda t: npz_with(t, classes=np.array([b"\xff", b"b", b"c"])), "classes"),
    "npz mask of strings": (lambda t: npz_with(t, train_M=np.full((30, 3), "True")), "M"),
    "npz Y_full of 3s": (lambda t: npz_with(t, test_Y_full=np.full((9, 3), 3)), "Y_full"),
    "npz 1-D X": (lambda t: npz_with(t, train_X=np.zeros(30, np.float32)), "X"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_is_one_line_data_error(tmp_path, case):
    build, field = BAD[case]
    path = build(tmp_path)
    with pytest.raises(DataError) as info:
        load(path)
    msg = str(info.value)
    assert "\n" not in msg and path.name in msg and field in msg, msg


class Canary:
    """Unpickling this creates a directory: proof that a file got unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickled_object_array_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    keys = np.empty(8, dtype=object)
    keys[:] = [Canary(marker)] * 8
    z = dict(np.load(good(tmp_path, ".npz")))
    np.savez(tmp_path / "pickled.npz", **{**z, "valid_keys": keys}, allow_pickle=True)
    with pytest.raises(DataError, match="pickled.npz: valid_keys: pickle names posix.mkdir"):
        load(tmp_path / "pickled.npz")
    assert not marker.exists()
    np.load(tmp_path / "pickled.npz", allow_pickle=True)["valid_keys"]  # the canary does work
    assert marker.exists()


def test_pickled_arrays_of_str_read_back_equal(tmp_path):
    """What np.savez makes of pandas strings (object arrays, pickled) is read, without pickle."""
    ds = dataset()
    z = dict(np.load(good(tmp_path, ".npz")))
    strings = ("classes", "train_keys", "valid_keys", "test_keys")
    np.savez(tmp_path / "objects.npz", **{**z, **{k: z[k].astype(object) for k in strings}})
    with np.load(tmp_path / "objects.npz") as raw, pytest.raises(ValueError, match="pickle"):
        raw["classes"]  # numpy itself needs allow_pickle for these
    again = load(tmp_path / "objects.npz")
    assert again.fingerprint == ds.fingerprint and again.classes == ds.classes
    assert all(s.keys.dtype.kind == "U" for s in again.splits.values())


def test_pickled_classes_of_non_str_are_refused(tmp_path):
    path = npz_with(tmp_path, classes=np.array([1, "b", "c"], dtype=object))
    with pytest.raises(DataError, match="bad.npz: classes: element of type int"):
        load(path)


# --- describe ---

def test_tables_count_observed_labels(tmp_path):
    ds = dataset()
    ct, st = class_table(ds), split_table(ds)
    tr = ct[ct["split"] == "train"].set_index("class")
    assert np.allclose(tr["observed"], ds.train.M.mean(0))
    assert tr["positives"].tolist() == ds.train.Y.sum(0).astype(int).tolist()
    assert (tr["positives"] + tr["negatives"]).tolist() == ds.train.M.sum(0).tolist()
    assert tr["true_positives"].tolist() == ds.train.Y_full.sum(0).astype(int).tolist()
    assert st.set_index("split").loc["valid", ["N", "T", "F", "C"]].tolist() == [8, 4, 6, 3]


def test_cli_describe_prints_shapes_and_class_counts(tmp_path):
    ds = dataset(full=False)
    path = save(ds, tmp_path / "d.npz")
    r = CliRunner().invoke(app, ["data", "describe", str(path)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for name, s in ds.splits.items():
        row = next(line for line in lines if line.strip("│ ").startswith(f"{name} "))
        assert [str(v) for v in (s.N, s.T, s.F, s.C)] == row.replace("│", " ").split()[1:5]
        table = lines[lines.index(next(li for li in lines if f"{name}: classes" in li)):]
        for c, cls in enumerate(ds.classes):
            row = next(line for line in table if f" {cls} " in line).replace("│", " ").split()
            assert row[1] == f"{s.M[:, c].mean():.3f}" and row[2] == str(int(s.Y[:, c].sum()))


def test_cli_describe_prints_class_names_verbatim(tmp_path):
    ds = dataset()
    ds = Dataset(**ds.splits, classes=("[/]", "[bold]b", "c"))  # rich markup must not apply
    r = CliRunner().invoke(app, ["data", "describe", str(save(ds, tmp_path / "d.h5"))])
    assert r.exit_code == 0 and "[/]" in r.output and "[bold]b" in r.output, r.output


@pytest.mark.parametrize("case", ["h5 truncated to half", "npz member not .npy", "missing file"])
def test_cli_describe_bad_file_exits_2_with_one_line(tmp_path, case):
    path = BAD[case][0](tmp_path)
    r = CliRunner().invoke(app, ["data", "describe", str(path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and path.name in r.stderr
