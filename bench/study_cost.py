"""Epochs a study trains, counted: the paper-sized study's budget, for the benches' projections.

A study (tagtune.launch.study) searches every (method, proportion) cell with ``trials``
trials under its own ASHA (tagtune.launch.scheduler: max_t = epochs, grace period 5,
reduction factor 3), then retrains each cell's best config with ``replicates`` seeds to the
end. LE's stage-1 teacher is shared (tagtune.study.fit.teachers): trained once per (proportion,
seed) -- one for the whole search of a cell (its trials share the seed), one per replicate
seed, the first of which is the search's. The ASHA count is simulated with Ray's rule
(AsyncHyperBandScheduler: at each rung a trial goes on iff its score is not below the
(1 - 1/rf) quantile of the scores recorded there so far; the first trial at a rung always
goes on), the trials of a cell one after another (a study runs its 20 cells side by side, so
a cell rarely has two trials running at once), their scores independent draws (a searcher
that learns moves later trials up, and lets more of them through).

Only the standard library: the GPU bench imports nothing beyond torch, numpy and h5py.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

GRACE, RF = 5, 3.0  # the study's ASHA defaults (tagtune.study.folder)


def rungs(max_t: int, grace: int = GRACE, rf: float = RF) -> list[int]:
    """Ray's milestones below max_t: grace * rf^k (5, 15, 45 for max_t 100)."""
    n = int(math.log(max_t / grace) / math.log(rf) + 1)
    return [int(grace * rf ** k) for k in range(n)]


@functools.lru_cache  # seeded: the same arguments, the same result (the benches ask again)
def asha_epochs(trials: int = 20, max_t: int = 100, grace: int = GRACE, rf: float = RF,
                reps: int = 400, seed: int = 0) -> tuple[float, float]:
    """Mean epochs one cell's search trains under ASHA, and the mean share of its trials that
    run to the end; trials one after another, scores i.i.d. (a rung's score: the trial's
    quality plus noise)."""
    rng = random.Random(seed)
    milestones = rungs(max_t, grace, rf)
    total = finished = 0
    for _ in range(reps):
        recorded: list[list[float]] = [[] for _ in milestones]
        for _ in range(trials):
            quality = rng.gauss(0.0, 1.0)
            ran = max_t
            for i, m in enumerate(milestones):
                score = quality + rng.gauss(0.0, 0.3)
                seen = sorted(recorded[i])
                cut = _quantile(seen, 1.0 - 1.0 / rf) if seen else None
                recorded[i].append(score)
                if cut is not None and score < cut:
                    ran = m
                    break
            total += ran
            finished += ran == max_t
    return total / reps, finished / (reps * trials)


def _quantile(xs: list[float], q: float) -> float:
    """numpy's default (linear) percentile of sorted ``xs``, as Ray's np.nanpercentile."""
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Budget:
    """Epochs per method of one study."""

    search: dict[str, float]
    """Epochs of the search phase (LE: its students, plus one teacher per cell)."""
    replicate: dict[str, float]
    """Epochs of the replicate phase (LE: students and the teachers of new seeds)."""

    def total(self, method: str) -> float:
        return self.search[method] + self.replicate[method]


def paper_study(methods: tuple[str, ...] = ("b0", "b1", "le", "mt"), proportions: int = 5,
                trials: int = 20, replicates: int = 5, epochs: int = 100,
                reuse_best: bool = False) -> Budget:
    """The paper-sized study's epochs (defaults: 4 methods x 5 proportions x 20 trials, ASHA,
    5 replicates of 100 epochs). ``reuse_best``: the search's best trial (a complete run of the
    best config with the search's seed, replicate 0's) stands in for replicate 0."""
    from tagtune.study.methods import shares_teacher

    per_cell, _ = asha_epochs(trials, epochs)
    fresh = replicates - (1 if reuse_best and replicates else 0)
    search, replicate = {}, {}
    for m in methods:
        shared = shares_teacher(m)  # LE: stage 1 trained once per (proportion, seed)
        teacher = epochs if shared else 0  # one shared teacher for the cell's search
        search[m] = proportions * (per_cell + teacher)
        # LE: a student per replicate, a teacher per seed the search did not train (r >= 1)
        replicate[m] = proportions * (fresh * epochs + (max(replicates - 1, 0) * epochs if shared else 0))
    return Budget(search, replicate)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


__all__ = ["Budget", "asha_epochs", "hours", "paper_study", "rungs"]
