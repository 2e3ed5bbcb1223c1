"""The search phase: one Optuna study and one ASHA per cell in one Tune experiment; a later round
goes on from the studies and rungs of the rounds before."""

from __future__ import annotations

import json
import logging
import math

from ray import tune

from tagtune.analysis.importance import journal_storage
from tagtune.launch.counts import cell_counts
from tagtune.launch.objective import metric
from tagtune.launch.phase import fit_or_resume
from tagtune.launch.ray_start import max_concurrent
from tagtune.launch.scheduler import CellASHA
from tagtune.launch.searcher import Cell, CellSearcher
from tagtune.launch.wiring import Output, phase_trainable, run_config, trial_dirname_of
from tagtune.search_spaces import Ranges
from tagtune.study import atomic
from tagtune.study.config import ConfigError
from tagtune.study.data import Dataset
from tagtune.study.folder import (
    OPTUNA_JOURNAL,
    SEARCH,
    StudySettings,
    phase_dirname,
    phase_dirs,
    trial_id_of,
    tunestate,
)

log = logging.getLogger(__name__)


def run_search(settings: StudySettings, ds: Dataset, ranges: Ranges, experiment_id: str,
            out: Output, rnd: int = 1) -> dict:
    cells = [Cell(m, p) for m in settings.methods for p in settings.missing]
    searcher = CellSearcher(cells, trials_per_cell=settings.trials, ranges=ranges,
                            preset=settings.preset, seed=settings.seed,
                            base_config=settings.base_config(phase="search"), block=settings.fuse_size)
    expected, earlier, previous = len(cells) * settings.trials, None, None
    if rnd > 1:
        # A later round: each existing cell's Optuna study goes on (TPE sees every earlier trial)
        # and only the added trials are handed out; its ASHA knows the earlier trials' rungs.
        previous = final_searcher(settings, ranges, rnd - 1)
        expected = sum(searcher.continue_from(previous).values())
        earlier = earlier_reports(settings, rnd)
    dirname = phase_dirname(SEARCH, rnd)

    def make_tuner() -> tune.Tuner:
        return tune.Tuner(
            phase_trainable(settings, ds, dirname),
            tune_config=tune.TuneConfig(
                metric=metric(settings)[0], mode=metric(settings)[1], search_alg=searcher,
                num_samples=expected,
                max_concurrent_trials=max_concurrent(settings),
                reuse_actors=True,  # a worker process per trial would spend seconds importing torch
                trial_dirname_creator=trial_dirname_of,
                scheduler=CellASHA(max_t=settings.epochs, grace_period=settings.grace_period,
                                   reduction_factor=settings.reduction_factor, earlier=earlier),
            ),
            run_config=run_config(settings, dirname, experiment_id, out),
        )

    if expected:  # an extension by replicates only adds no trial: no search experiment
        fit_or_resume(settings, ds, dirname, make_tuner, expected, out, experiment_id)
    # The searcher Tune ran may be one it restored from disk: read its final state back from
    # the experiment directory, then keep each cell's Optuna study for the analysis.
    final = final_searcher(settings, ranges, rnd) if expected else previous
    # Written whole: a kill mid-export would leave a file with some cells' studies. An Optuna
    # journal file: SQLite's export cost ~13 ms a trial (Optuna's ORM), after the search.
    with atomic.atomic_path(settings.study_dir / OPTUNA_JOURNAL) as tmp:
        final.export(journal_storage(tmp))
    counts = cell_counts(settings)
    return {cell: {**counts.get(cell, {}), "optuna": info} for cell, info in final.summary().items()}


def final_searcher(settings: StudySettings, ranges: Ranges, rnd: int) -> CellSearcher:
    """The searcher as the newest search experiment up to round ``rnd`` saved it (its state
    holds every cell's Optuna study with every trial so far)."""
    for r in range(rnd, 0, -1):
        path = settings.study_dir / phase_dirname(SEARCH, r)
        if any(path.glob("searcher-state-*")):
            final = CellSearcher([Cell(m, p) for m in settings.methods for p in settings.missing],
                                 trials_per_cell=settings.trials, ranges=ranges,
                                 preset=settings.preset, seed=settings.seed)
            final.restore_from_dir(str(path))
            return final
    raise ConfigError(SEARCH, "no saved searcher state: the search has not run",
                      where=str(settings.study_dir))


def search_trials(settings: StudySettings, before: int | None = None):
    """(trial id, trial directory) of every recorded search trial, rounds before ``before``."""
    for r, (_, path) in enumerate(phase_dirs(settings.study_dir, SEARCH), start=1):
        if (before is not None and r >= before) or not path.is_dir():
            continue
        recorded = tunestate.recorded_trials(path)
        for trial_dir in sorted(p for p in path.iterdir() if (p / "params.json").is_file()):
            tid = trial_id_of(trial_dir.name)
            if recorded is None or tid in recorded:
                yield tid, trial_dir


def earlier_reports(settings: StudySettings, rnd: int) -> dict[str, dict[str, list]]:
    """Per cell, per search trial of the rounds before ``rnd``: its (budget, metric) reports."""
    out: dict[str, dict[str, list]] = {}
    key, _ = metric(settings)
    for tid, trial_dir in search_trials(settings, before=rnd):
        cell = json.loads((trial_dir / "params.json").read_text())["cell"]
        reports = []
        path = trial_dir / "result.json"
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            value = row.get(key)
            if "budget" in row and isinstance(value, int | float) and math.isfinite(value):
                reports.append((row["budget"], float(value)))
        out.setdefault(cell, {})[tid] = reports
    return out
