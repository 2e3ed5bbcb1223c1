"""Simulating missing labels on the training split.

The paper removes a proportion p of the *observed* training labels, each
independently (its Fig. 5: 10, 20, 40, 80%). The removed values are not kept
anywhere the training code can reach: ``Split`` zeroes ``Y`` wherever ``M`` is
False, and ``Y_full`` exists only for synthetic data, where it is the ground truth
used for evaluation.
"""

from __future__ import annotations

import numpy as np

from tagtune.study.data.core import DataError, Dataset, Split


def remove_labels(ds: Dataset, p: float, seed: int = 0) -> Dataset:
    """Drop each observed training label with probability ``p`` (seeded); other splits unchanged."""
    if not 0.0 <= p < 1.0:
        raise DataError(ds.source, "missing", f"proportion must be in [0, 1), got {p}")
    if seed < 0:
        raise DataError(ds.source, "seed", f"must be a non-negative integer, got {seed}")
    if p == 0.0:
        return ds
    tr = ds.train
    rng = np.random.default_rng([seed, 0x6D697373])  # a stream of its own, not the training seed's
    keep = rng.random(tr.M.shape) >= p
    M = tr.M & keep
    train = Split(tr.X, np.where(M, tr.Y, 0), M, tr.keys, tr.Y_full, tr.where)
    meta = {**ds.meta, "removed_fraction": p, "removed_seed": seed}
    return ds.with_train(train, meta=meta)


def positives_only(ds: Dataset) -> Dataset:
    """AudioSet-style view of the training split: only positive labels are observed.

    Validation and test keep their labels, so that model selection and evaluation
    stay meaningful. Only the methods that declare positives-only observations train on it
    (tagtune.study.methods.supports; the README's method table lists them): not those that
    need observed negatives.
    """
    tr = ds.train
    M = tr.M & (tr.Y == 1)
    train = Split(tr.X, tr.Y, M, tr.keys, tr.Y_full, tr.where)
    meta = {**ds.meta, "view": "positives-only"}
    return ds.with_train(train, observation="positives-only", meta=meta)
