"""What a study's search optimises, in one place: the study's objective
(:mod:`tagtune.study.objective`) as the key each trial reports and min/max. The scheduler and the
searcher get it from Tune's TuneConfig, where the launch sets it; the counts, the best trials and
the display compare by the same rule."""

from __future__ import annotations

from tagtune.study import objective as objectives
from tagtune.study.folder import StudySettings


def metric(settings: StudySettings) -> tuple[str, str]:
    """(report key, ``min``/``max``) of the study's objective: ``val/best_loss``/min for
    ``val/loss`` (every study before the setting), ``val/best_auprc_macro``/max, ..."""
    return objectives.score_key(settings.objective), objectives.mode(settings.objective)


def better(a: float, b: float, settings: StudySettings) -> bool:
    """Whether score ``a`` beats ``b`` under the study's objective (NaN never does)."""
    return objectives.better(a, b, settings.objective)


__all__ = ["better", "metric"]
