"""The objective: what model selection (per epoch) and the search (per trial) optimise.

One setting, ``objective`` (TrainConfig's, and a study's ``objective:`` / ``--objective``), names
a validation metric of the fit loop's epoch logs:

- ``val/loss``: BCE over the observed validation labels, minimised (every study before the
  setting existed: an old study.yaml without the key reads as this);
- ``val/auprc_macro``: macro average precision over the observed validation labels, maximised
  (threshold-free: how well each class's clips are ranked);
- ``val/f1_macro_tuned``: F1 macro with each class's threshold tuned on the observed validation
  labels (:func:`tagtune.study.eval.metrics.tuned_thresholds`), maximised.

Why the default is what it is: docs/study.md, from bench/objective_check.py.

Internally a score is kept as a quantity to MINIMISE (:func:`loss`: the loss itself, or the
negated metric), so the fit loop's selection state (``FitState.best_loss``) and a checkpoint
written before this module existed keep their meaning for ``val/loss``. A NaN score (a metric
with nothing to score, e.g. no observed positive) is never the best.
"""

from __future__ import annotations

import math
from typing import Any

OBJECTIVES: tuple[str, ...] = ("val/loss", "val/auprc_macro", "val/f1_macro_tuned")
LEGACY = "val/loss"
"""The objective of every study and run from before the setting: what an absent key means in an
existing study.yaml or trial config."""
DEFAULT = "val/auprc_macro"
"""A new study's and run's objective: the measured choice (bench/objective_check.py, docs/study.md)."""
_MODES = {"val/loss": "min", "val/auprc_macro": "max", "val/f1_macro_tuned": "max"}


def check(objective: Any, field: str = "objective") -> str:
    """``objective`` if it is one of OBJECTIVES, else a one-line ValueError naming the field."""
    if objective not in OBJECTIVES:
        raise ValueError(f"{field}: unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    return objective


def mode(objective: str) -> str:
    """``min`` or ``max``: how Tune, Optuna and the selection compare the objective's values."""
    return _MODES[check(objective)]


def score_key(objective: str) -> str:
    """The key each trial report carries for the search and the scheduler: the objective's best
    value so far over the selectable epochs. ``val/loss`` -> ``val/best_loss`` (the key studies
    have always had), ``val/auprc_macro`` -> ``val/best_auprc_macro``."""
    return "val/best_" + check(objective).removeprefix("val/")


def loss(value: float, objective: str) -> float:
    """The objective's ``value`` as a quantity to minimise; NaN -> inf (never selected)."""
    value = float(value)
    if math.isnan(value):
        return math.inf
    return value if mode(objective) == "min" else -value


def from_loss(internal: float, objective: str) -> float:
    """The inverse of :func:`loss` (inf -> -inf for a maximised objective: nothing selected yet)."""
    return internal if mode(objective) == "min" else -internal


def of_logs(logs: dict[str, Any], objective: str) -> float:
    """The objective in one epoch's logs, as a quantity to minimise (absent: inf)."""
    value = logs.get(check(objective))
    return math.inf if value is None else loss(value, objective)


def better(a: float, b: float, objective: str) -> bool:
    """Whether value ``a`` of the objective is strictly better than ``b`` (NaN never is)."""
    return loss(a, objective) < loss(b, objective)


def mean_score(values: list[float]) -> float:
    """The mean of a config's scores over its runs (its search run and the re-rank's seeds); NaN
    if any is NaN or there is none (a run with nothing to score is not evidence for the config)."""
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return math.fsum(values) / len(values)


def rerank_choice(scores: dict[str, list[float]], objective: str) -> str:
    """The re-rank's choice: the candidate (key of ``scores``, in the order of the single-run
    ranking, best first) whose scores over its runs have the best MEAN under ``objective``; the
    earlier candidate on a tie; the first where no mean is finite. A single run's best is partly
    the luckiest seed on a small validation set; the mean over seeds is less so."""
    if not scores:
        raise ValueError("rerank_choice: no candidates")
    chosen = next(iter(scores))
    for key, values in scores.items():
        if better(mean_score(values), mean_score(scores[chosen]), objective):
            chosen = key
    return chosen


__all__ = ["DEFAULT", "LEGACY", "OBJECTIVES", "better", "check", "from_loss", "loss", "mean_score",
           "mode", "of_logs", "rerank_choice", "score_key"]
