"""``missing`` in a run's config: fit removes that share of the observed training labels, with
the run's seed, and leaves validation and test labels as they are."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tagtune.study.config import ModelConfig, TrainConfig, replace
from tagtune.study.data import remove_labels
from tagtune.study.fit import train as train_module
from tagtune.study.fit.train import fit
from tests.conftest import make_split

CFG = TrainConfig(method="b1", epochs=2, batch_size=32, lr=3e-3, lr_decay_epochs=(), seed=3,
                  missing=0.5, model=ModelConfig(layers=1, hidden=8, dropout=0.3))


def _norm(history: list[dict]) -> list[dict]:
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in h.items()}
            for h in history]


@pytest.fixture(scope="module")
def dataset():
    """The tiny dataset's shape, with enough training labels to measure a share."""
    from tagtune.study.data import Dataset

    rng = np.random.default_rng(7)
    return Dataset(train=make_split(rng, 400, prefix="tr"), valid=make_split(rng, 30, prefix="va"),
                   test=make_split(rng, 30, prefix="te"), classes=("a", "b", "c"), name="m")


def test_fit_removes_the_share_from_train_only(dataset, monkeypatch):
    seen = []

    def recording(ds, p, seed):
        out = remove_labels(ds, p, seed=seed)
        seen.append((p, seed, out))
        return out

    monkeypatch.setattr(train_module, "remove_labels", recording)
    result = fit(dataset, CFG)
    ((p, seed, used),) = seen
    assert (p, seed) == (0.5, 3)
    before, after = dataset.train.M, used.train.M
    n = int(before.sum())
    removed = int((before & ~after).sum())
    assert not (after & ~before).any()
    assert abs(removed - 0.5 * n) <= 4 * math.sqrt(n * 0.25) + 1, (removed, n)
    for name in ("valid", "test"):  # untouched: the same labels and mask, bit for bit
        a, b = getattr(dataset, name), getattr(used, name)
        assert np.array_equal(a.M, b.M) and np.array_equal(a.Y, b.Y) and np.array_equal(a.X, b.X)
    # It trained on exactly that: the same run on the pre-removed data with missing 0.
    monkeypatch.undo()
    same = fit(remove_labels(dataset, 0.5, seed=3), replace(CFG, missing=0.0))
    assert _norm(same.history) == _norm(result.history)
    whole = fit(dataset, replace(CFG, missing=0.0))
    assert _norm(whole.history) != _norm(result.history)  # the removal did change training


def test_another_seed_removes_other_labels(dataset, monkeypatch):
    masks = []

    def recording(ds, p, seed):
        out = remove_labels(ds, p, seed=seed)
        masks.append(out.train.M)
        return out

    monkeypatch.setattr(train_module, "remove_labels", recording)
    for seed in (3, 4):
        fit(dataset, replace(CFG, seed=seed, epochs=1))
    assert not np.array_equal(masks[0], masks[1])
