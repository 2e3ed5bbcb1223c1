"""The data model: what Split and Dataset accept, refuse, and guarantee once built."""

from __future__ import annotations

import numpy as np
import pytest

from tagtune.study.data import DataError, Dataset, Split, load, save
from tests.conftest import make_split


def parts(n: int = 5, T: int = 2, F: int = 3, C: int = 2) -> dict:
    """Valid constructor arguments of a small split, to be spoiled one field at a time."""
    rng = np.random.default_rng(1)
    Y = (rng.random((n, C)) < 0.5).astype(np.float32)
    return {"X": rng.normal(size=(n, T, F)).astype(np.float32), "Y": Y,
            "M": np.ones((n, C), bool), "keys": np.array([f"k{i}" for i in range(n)]),
            "Y_full": Y.copy()}


def refused(field: str, **spoiled) -> DataError:
    with pytest.raises(DataError) as info:
        Split(**{**parts(), **spoiled}, where="mem:train")
    e = info.value
    assert e.field == field and "mem:train" in str(e) and "\n" not in str(e)
    return e


def test_2d_features_become_one_frame():
    X = np.arange(15, dtype=np.float64).reshape(5, 3)
    s = Split(**{**parts(), "X": X})
    assert (s.N, s.T, s.F, s.C) == (5, 1, 3, 2)
    assert s.X.dtype == np.float32 and np.array_equal(s.X[:, 0, :], X)


def test_missing_labels_are_zeroed_and_arrays_read_only():
    p = parts()
    M = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], bool)
    Y = np.where(M, p["Y"], 7.0)  # a missing label's stored value must not survive
    s = Split(p["X"], Y, M, p["keys"], p["Y_full"])
    assert np.array_equal(s.Y, np.where(M, p["Y"], 0)) and s.Y.dtype == np.float32
    assert s.M.dtype == bool and s.keys.dtype.kind == "U"
    for a in (s.X, s.Y, s.M, s.keys, s.Y_full):
        with pytest.raises(ValueError, match="read-only"):
            a[0] = a[1]


def test_mask_of_zeros_and_ones_becomes_bool():
    M = np.array([[1, 0]] * 5, np.int64)
    assert Split(**{**parts(), "M": M}).M.dtype == bool


def test_float32_features_are_not_copied():
    X = parts()["X"]
    assert np.shares_memory(Split(**{**parts(), "X": X}).X, X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])  # 1e300 overflows float32
def test_non_finite_features(bad):
    X = parts()["X"].astype(np.float64)
    X[2, 1, 0] = bad
    refused("X", X=X)


@pytest.mark.parametrize(("field", "value"), [
    ("X", np.zeros(5, np.float32)),
    ("X", np.zeros((5, 2, 3, 1), np.float32)),
    ("X", np.zeros((5, 0, 3), np.float32)),
    ("Y", np.zeros(5, np.float32)),
    ("Y", np.zeros((5, 2, 1), np.float32)),
    ("Y", np.zeros((5, 0), np.float32)),
])
def test_rank_errors(field, value):
    refused(field, **{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("Y", np.zeros((4, 2), np.float32)),
    ("M", np.ones((5, 3), bool)),
    ("M", np.ones((2, 5), bool)),
    ("keys", np.array(["a", "b"])),
    ("keys", np.array([["a"], ["b"], ["c"], ["d"], ["e"]])),
    ("Y_full", np.zeros((5, 3), np.float32)),
])
def test_shape_mismatch(field, value):
    assert "expected" in str(refused(field, **{field: value}))


@pytest.mark.parametrize("M", [
    np.full((5, 2), 2),
    np.full((5, 2), 0.5),
    np.full((5, 2), "True"),
    np.full((5, 2), b"1"),
    np.full((5, 2), True, dtype=object),
])
def test_mask_not_boolean(M):
    assert "not boolean" in str(refused("M", M=M))


@pytest.mark.parametrize("bad", [2.0, -1.0, 0.5, np.nan])
def test_observed_labels_outside_0_1(bad):
    Y = parts()["Y"].copy()
    Y[3, 1] = bad
    refused("Y", Y=Y)


def test_unobserved_labels_may_hold_anything():
    Y, M = np.full((5, 2), np.nan), np.zeros((5, 2), bool)
    assert not Split(**{**parts(), "Y": Y, "M": M}).Y.any()


@pytest.mark.parametrize("bad", [2.0, -1.0, np.nan])
def test_full_labels_outside_0_1(bad):
    Y_full = parts()["Y_full"].copy()
    Y_full[0, 0] = bad
    refused("Y_full", Y_full=Y_full)


def test_duplicate_keys_are_named():
    assert "'k1'" in str(refused("keys", keys=np.array(["k0", "k1", "k2", "k1", "k4"])))


def test_byte_keys_are_decoded_and_bad_utf8_refused():
    keys = np.array([f"é{i}".encode() for i in range(5)])
    assert Split(**{**parts(), "keys": keys}).keys.tolist() == [f"é{i}" for i in range(5)]
    refused("keys", keys=np.array([b"\xff\xfe", b"a", b"b", b"c", b"d"]))


def test_empty_split():
    p = parts()
    refused("X", X=p["X"][:0], Y=p["Y"][:0], M=p["M"][:0], keys=p["keys"][:0], Y_full=None)


@pytest.mark.parametrize("field", ["X", "Y", "keys", "Y_full"])
def test_object_arrays_are_refused(field):
    refused(field, **{field: parts()[field].astype(object)})


def test_error_is_one_line_even_for_a_file_name_with_a_newline():
    e = DataError("weird\nname.h5", "X", "bad\r\nthing")
    assert "\n" not in str(e) and "\r" not in str(e) and "name.h5" in str(e)


def three(rng, T=4, F=6, C=3, **kw) -> dict:
    return {s: make_split(rng, n, T=T, F=F, C=C, prefix=s, **kw)
            for s, n in (("train", 10), ("valid", 4), ("test", 4))}


@pytest.mark.parametrize(("which", "TFC"), [("valid", (5, 6, 3)), ("test", (4, 7, 3)),
                                            ("valid", (4, 6, 2)), ("test", (1, 6, 3))])
def test_splits_must_agree_on_T_F_C(which, TFC):
    rng = np.random.default_rng(0)
    splits = three(rng)  # 4 x 6 frames, 3 classes
    T, F, C = TFC
    splits[which] = make_split(rng, 4, T=T, F=F, C=C, prefix=which)
    with pytest.raises(DataError, match=f"memory:{which}") as info:
        Dataset(**splits, classes=("a", "b", "c"), source="src.h5")
    assert info.value.field in ("X", "Y")


@pytest.mark.parametrize(("field", "changes"), [
    ("Y", {"classes": ("a", "b")}),
    ("Y", {"classes": ("a", "b", "c", "d")}),
    ("classes", {"classes": ("a", "b", "a")}),
    ("classes", {"classes": ()}),
    ("classes", {"classes": "abc"}),
    ("observation", {"observation": "mostly"}),
    ("meta", {"meta": {"x": object()}}),
    ("meta", {"meta": ["not", "a", "dict"]}),
    ("valid", {"valid": "not a split"}),
])
def test_dataset_refuses(field, changes, tiny_dataset):
    args = {"train": tiny_dataset.train, "valid": tiny_dataset.valid, "test": tiny_dataset.test,
            "classes": ("a", "b", "c"), "source": "src.h5"}
    with pytest.raises(DataError) as info:
        Dataset(**{**args, **changes})
    assert info.value.field == field and "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_fingerprint_is_stable_across_save_and_load(tiny_dataset, tmp_path, suffix):
    again = load(save(tiny_dataset, tmp_path / f"d{suffix}"))
    assert again.fingerprint == tiny_dataset.fingerprint
    assert load(tmp_path / f"d{suffix}").fingerprint == tiny_dataset.fingerprint


def relabel(ds: Dataset, split: str, array: str) -> Dataset:
    """``ds`` with one entry of one label array of one split changed."""
    s = ds.split(split)
    Y, M, Yf = s.Y.copy(), s.M.copy(), s.Y_full.copy()
    i, c = map(int, np.argwhere(M)[0])
    if array == "Y":
        Y[i, c] = 1 - Y[i, c]
    elif array == "M":
        M[i, c] = False
    else:
        Yf[i, c] = 1 - Yf[i, c]
    return Dataset(**{**ds.splits, split: Split(s.X, Y, M, s.keys, Yf)}, classes=ds.classes)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
@pytest.mark.parametrize("array", ["Y", "M", "Y_full"])
def test_fingerprint_changes_with_any_label(tiny_dataset, split, array):
    assert relabel(tiny_dataset, split, array).fingerprint != tiny_dataset.fingerprint


def test_fingerprint_ignores_name_and_meta_but_not_keys(tiny_dataset):
    same = Dataset(**tiny_dataset.splits, classes=tiny_dataset.classes, name="x", meta={"a": 1})
    assert same.fingerprint == tiny_dataset.fingerprint
    s = tiny_dataset.test
    renamed = Split(s.X, s.Y, s.M, np.array([f"z{i}" for i in range(s.N)]), s.Y_full)
    assert tiny_dataset.with_train(tiny_dataset.train).fingerprint == tiny_dataset.fingerprint
    other = Dataset(**{**tiny_dataset.splits, "test": renamed}, classes=tiny_dataset.classes)
    assert other.fingerprint != tiny_dataset.fingerprint


def test_take(tiny_dataset):
    s = tiny_dataset.train
    idx = np.array([5, 0, 39])
    t = s.take(idx)
    assert t.keys.tolist() == ["tr5", "tr0", "tr39"] and t.where == s.where
    for a, b in ((t.X, s.X), (t.Y, s.Y), (t.M, s.M), (t.Y_full, s.Y_full)):
        assert np.array_equal(a, b[idx]) and not a.flags.writeable
    odd = s.take(np.arange(s.N) % 2 == 1)  # a boolean mask works too
    assert odd.N == 20 and odd.keys[0] == "tr1"
    with pytest.raises(DataError, match="duplicate"):
        s.take(np.array([1, 1]))
    with pytest.raises(DataError, match="empty"):
        s.take(np.array([], int))


def test_take_without_full_labels():
    s = make_split(np.random.default_rng(0), 6, full=False)
    assert s.take(np.array([2, 3])).Y_full is None


def test_a_clip_in_two_splits_is_refused():
    rng = np.random.default_rng(1)
    train = make_split(rng, 5, prefix="k")
    test = make_split(rng, 3, prefix="k")  # k0..k2 are train clips too
    with pytest.raises(DataError, match="keys: clip 'k0' is also in train"):
        Dataset(train=train, valid=make_split(rng, 3, prefix="v"), test=test, classes=("a", "b", "c"))
