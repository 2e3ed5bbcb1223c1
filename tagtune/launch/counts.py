"""What the search phases found, read from Tune's experiments on disk: each cell's trial counts and
best trial. Each experiment is parsed once per snapshot (:func:`analysis`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ray import tune

from tagtune.launch.objective import better, metric
from tagtune.study import tunestate
from tagtune.study.folder import (
    SEARCH,
    StudySettings,
    phase_dirs,
)

log = logging.getLogger(__name__)


_PARSED: dict[str, tuple[tuple, tune.ExperimentAnalysis]] = {}


def analysis(path: Path) -> tune.ExperimentAnalysis:
    """Tune's experiment at ``path`` as Ray parses it, parsed once per snapshot: the counts, the
    best trials, the replicates and the display read the same one (a phase of thousands of trials
    takes seconds to parse)."""
    newest = tunestate.newest(path, tunestate.EXPERIMENT_STATE)
    key = (newest.name, newest.stat().st_mtime_ns, newest.stat().st_size) if newest else ()
    if str(path) not in _PARSED or _PARSED[str(path)][0] != key:
        # No default metric: the best trials are chosen here, under the study's objective.
        _PARSED[str(path)] = key, tune.ExperimentAnalysis(str(path))
    return _PARSED[str(path)][1]


def cell_counts(settings: StudySettings) -> dict[str, dict[str, int]]:
    """Per cell, its search trials over every round: ran, completed, stopped early, failed."""
    counts: dict[str, dict[str, int]] = {}
    for _, path in phase_dirs(settings.study_dir, SEARCH):
        for trial in analysis(path).trials if path.is_dir() else ():
            _count(counts, trial.config["cell"], trial.status == "ERROR", trial.last_result or {})
    return counts


def _count(counts: dict, cell: str, error: bool, metrics: dict) -> None:
    c = counts.setdefault(cell, {"trials": 0, "completed": 0, "stopped_early": 0, "failed": 0})
    c["trials"] += 1
    if error:
        c["failed"] += 1
    elif metrics.get("complete"):
        c["completed"] += 1
    else:
        c["stopped_early"] += 1


def best_per_cell(settings: StudySettings) -> dict[str, dict[str, Any]]:
    """Per cell, the trial with the best score under the study's objective among those that ran
    to the end, over every round's search."""
    key, _ = metric(settings)
    trials = [t for _, path in phase_dirs(settings.study_dir, SEARCH) if path.is_dir()
              for t in analysis(path).trials]
    best: dict[str, dict[str, Any]] = {}
    for trial in trials:
        last = trial.last_result or {}
        if not last.get("complete") or key not in last:
            continue  # cut short by ASHA: its score is from a smaller budget
        cell = trial.config["cell"]
        # A tie (a ranking metric on a few observed labels ties often) goes to the earliest Optuna
        # trial, the paper's point first (the analysis' best_configs keeps the same rule).
        held = best.get(cell)
        if held is None or better(last[key], held["value"], settings) or (
                last[key] == held["value"]
                and _order(trial.config, trial.trial_id) < _order(held["config"], held["trial_id"])):
            best[cell] = {"value": last[key], "metric": key,  # which score "value" is
                          "trial_id": trial.trial_id, "config": dict(trial.config)}
    missing = set(settings.cells) - set(best)
    if missing:
        log.warning("no trial ran to the end in cells %s: they get no replicates", sorted(missing))
    return dict(sorted(best.items()))


def _order(config: dict[str, Any], trial_id: str) -> tuple[float, str]:
    return config.get("optuna_trial", math.inf), trial_id
