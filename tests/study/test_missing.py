"""Missing-label simulation (the paper's Fig. 5 protocol) and the positives-only view."""

from __future__ import annotations

import numpy as np
import pytest

from tagtune.study.data import DataError, Dataset, Split, positives_only, remove_labels
from tests.conftest import make_split


def real_like(n_train: int = 1000, C: int = 8, seed: int = 0, full: bool = False) -> Dataset:
    """Half-observed labels; no Y_full unless asked, like a real release."""
    rng = np.random.default_rng(seed)
    return Dataset(
        train=make_split(rng, n_train, T=2, F=3, C=C, prefix="tr", full=full),
        valid=make_split(rng, 20, T=2, F=3, C=C, prefix="va", full=full),
        test=make_split(rng, 20, T=2, F=3, C=C, prefix="te", full=full),
        classes=tuple(f"c{i}" for i in range(C)), meta={"origin": "test"},
    )


@pytest.mark.parametrize("p", [0.1, 0.2, 0.4, 0.8])
def test_removes_about_p_of_observed_train_labels_only(p):
    ds = real_like()
    out = remove_labels(ds, p, seed=1)
    assert out.valid is ds.valid and out.test is ds.test and out.classes == ds.classes
    n = int(ds.train.M.sum())
    removed = int((ds.train.M & ~out.train.M).sum())
    assert abs(removed - p * n) <= 4 * np.sqrt(n * p * (1 - p)) + 1, (removed, p * n)
    assert out.meta == {"origin": "test", "removed_fraction": p, "removed_seed": 1}


def test_removed_labels_are_gone():
    ds = real_like()
    out = remove_labels(ds, 0.5, seed=2)
    tr, before = out.train, ds.train
    assert not (tr.M & ~before.M).any()  # nothing unobserved becomes observed
    assert not tr.Y[~tr.M].any()  # a removed label reads as 0, whatever it was
    assert np.array_equal(tr.Y[tr.M], before.Y[tr.M])  # kept labels keep their value
    assert tr.Y_full is None and not tr.Y.flags.writeable


def test_result_does_not_depend_on_removed_values():
    """Flip the value of every label the removal drops: the results must be identical, so no
    attribute anywhere (arrays, keys, meta) can hold what was removed."""
    ds = real_like()
    dropped = ds.train.M & ~remove_labels(ds, 0.3, seed=5).train.M
    tr = ds.train
    flipped = Split(tr.X, np.where(dropped, 1 - tr.Y, tr.Y), tr.M, tr.keys, where=tr.where)
    other = ds.with_train(flipped)
    assert other.fingerprint != ds.fingerprint  # the inputs do differ
    a, b = remove_labels(ds, 0.3, seed=5), remove_labels(other, 0.3, seed=5)
    assert a.fingerprint == b.fingerprint and a.meta == b.meta
    for name, value in vars(a.train).items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, getattr(b.train, name)), name


def test_ground_truth_of_synthetic_data_is_kept_for_evaluation():
    ds = real_like(full=True)
    out = remove_labels(ds, 0.4, seed=0)
    assert np.array_equal(out.train.Y_full, ds.train.Y_full)


def test_seeded_and_reproducible():
    ds = real_like()
    a, b, c = (remove_labels(ds, 0.3, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.train.M, b.train.M) and a.fingerprint == b.fingerprint
    assert not np.array_equal(a.train.M, c.train.M)


def test_same_seed_larger_p_removes_a_superset():
    """One uniform draw per entry: the sensitivity sweep's settings are nested, not independent."""
    ds = real_like()
    masks = [remove_labels(ds, p, seed=3).train.M for p in (0.1, 0.2, 0.4, 0.8)]
    for kept_more, kept_less in zip(masks, masks[1:], strict=False):
        assert not (kept_less & ~kept_more).any() and kept_less.sum() < kept_more.sum()


def test_p_zero_is_identity():
    ds = real_like()
    out = remove_labels(ds, 0.0, seed=9)
    assert out.fingerprint == ds.fingerprint and np.array_equal(out.train.M, ds.train.M)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_p_outside_0_1_is_refused(p):
    with pytest.raises(DataError, match="proportion"):
        remove_labels(real_like(n_train=10), p)


def test_negative_seed_is_refused():
    with pytest.raises(DataError, match="seed"):
        remove_labels(real_like(n_train=10), 0.2, seed=-1)


def test_nested_removal_never_re_adds_labels():
    ds = real_like()
    once = remove_labels(ds, 0.4, seed=1)
    twice = remove_labels(once, 0.5, seed=2)
    assert not (twice.train.M & ~once.train.M).any()
    n = int(ds.train.M.sum())
    kept = int(twice.train.M.sum())
    assert abs(kept - 0.6 * 0.5 * n) <= 4 * np.sqrt(n * 0.3 * 0.7) + 1, (kept, n)
    assert not twice.train.Y[~twice.train.M].any()


def test_positives_only_keeps_exactly_the_positives_in_train():
    ds = real_like()
    out = positives_only(ds)
    tr = ds.train
    assert np.array_equal(out.train.M, tr.M & (tr.Y == 1))
    assert np.array_equal(out.train.Y, tr.Y) and out.train.Y[out.train.M].all()
    assert out.valid is ds.valid and out.test is ds.test
    assert out.observation == "positives-only" and ds.observation == "partial"
    assert out.meta == {"origin": "test", "view": "positives-only"}


def test_positives_only_after_removal_never_re_adds():
    ds = real_like()
    removed = remove_labels(ds, 0.5, seed=4)
    out = positives_only(removed)
    assert not (out.train.M & ~removed.train.M).any()
    assert out.meta["removed_fraction"] == 0.5 and out.meta["view"] == "positives-only"
