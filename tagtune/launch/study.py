"""Running a study: search every cell, (with ``rerank``) retrain each cell's top trials on extra
seeds and choose by their mean, then retrain each cell's best config with K seeds.

``run_study(settings)`` is the plain function under ``tagtune study``; ``resume_study(dir)``
under ``tagtune study resume``. What a study directory holds: :mod:`tagtune.study.folder`.

Launch input is checked before Ray starts (tagtune.launch.preflight); on a multi-node
cluster the study directory must be on storage every node sees.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagtune.analysis import gain
from tagtune.launch import paper_point
from tagtune.launch.counts import best_per_cell
from tagtune.launch.display import StudyDisplay, earlier_work, library_logs
from tagtune.launch.plan import plan_line
from tagtune.launch.preflight import (
    check_address,
    check_mlflow,
    check_shared_storage,
    check_trial_fits,
)
from tagtune.launch.ray_start import init_ray, max_concurrent, trial_resources
from tagtune.launch.replicates import ListSearcher, run_replicates
from tagtune.launch.rerank import run_rerank
from tagtune.launch.search import run_search
from tagtune.launch.snapshot_repair import StudyInterrupted, restore_checked
from tagtune.launch.tracking import (
    cell_summaries,
    final_sync,
    mlflow_experiment,
    record_cells,
)
from tagtune.launch.wiring import Output, phase_trainable
from tagtune.search_spaces import Ranges, load_ranges
from tagtune.study import atomic
from tagtune.study.config import ConfigError
from tagtune.study.data import Dataset, load
from tagtune.study.folder import (
    BEST,
    PHASES,
    REPLICATE,
    RERANK,
    ROUNDS,
    SEARCH,
    SETTINGS,
    SUMMARY,
    StudySettings,
    load_settings,
    load_study,
    phase_dirname,
    phase_dirs,
    read_rounds,
    round_count,
    tunestate,
)
from tagtune.study.methods import check_supported

log = logging.getLogger(__name__)
# Earlier names, kept: tests and pickles of earlier studies (a replicate phase's searcher) use them.
_trainable = phase_trainable


@dataclass
class StudyResult:
    study_dir: Path
    tracking_uri: str
    experiment_id: str
    best: dict[str, dict[str, Any]]
    replicates: list[dict[str, Any]]
    summary: dict[str, Any]
    mlflow_synced: bool = True
    """False: MLflow did not answer at the end; ``tagtune mlflow sync`` completes it later."""


def run_study(settings: StudySettings, *, verbose: int = 1, say_plan: bool = False) -> StudyResult:
    """Run (or continue) the study described by ``settings``; returns what it found.

    Bad launch input (search ranges, an unreachable cluster or tracking server, an
    unwritable or, on a multi-node cluster, unshared study directory, a bad data file,
    methods the data cannot train, a trial larger than any node of a local Ray) is a
    one-line ConfigError/DataError before any trial starts. Stopped early (Ctrl-C), it
    raises StudyInterrupted: the state is saved, ``resume_study`` continues it.

    ``verbose``: 0 = nothing on the terminal but errors; 1 = the live display
    (tagtune.launch.display); 2 = Ray Tune's trial table instead, and the libraries' log
    lines on the terminal. At 0 and 1 those lines go to ``STUDY_DIR/study.log``. ``say_plan``:
    first print what the study will run and at most how long (tagtune.launch.plan).
    """
    study_dir = settings.study_dir
    ranges = load_ranges(settings.search_space) if settings.search_space else Ranges()
    check_address(settings.address)
    check_mlflow(settings.tracking_uri)
    ds = load(settings.data)
    check_supported(settings.methods, ds.observation)
    rnd = round_count(study_dir)  # the round to run: the last one begun (1: never extended)
    for phase in (SEARCH, RERANK, REPLICATE):  # before anything is written: a refusal leaves
        restore_checked(settings, phase_dirname(phase, rnd))  # every file as it was
    _prepare_dir(study_dir, settings)
    with library_logs(study_dir, enabled=verbose < 2) as logs:
        experiment_id, plan = _start_ray_and_the_rest(settings, ds, say_plan)
        if logs is not None:
            logs.apply()  # ray.init installs Ray's own handlers
        if plan:
            print(plan, flush=True)
        display = (StudyDisplay(settings.methods, settings.missing, objective=settings.objective,
                                earlier=earlier_work(study_dir)) if verbose == 1 else None)
        out = Output(verbose, display, {"name": ds.name, "digest": ds.fingerprint,
                                         "source": settings.data}, logs)
        try:
            return _run(settings, ds, ranges, experiment_id, out)
        finally:
            if out.display is not None:
                out.display.stop()


def _start_ray_and_the_rest(settings: StudySettings, ds: Dataset, say_plan: bool) -> tuple[str, str | None]:
    """Ray started, and meanwhile the study's MLflow experiment made (or found) and the plan line
    timed: ray.init mostly waits for Ray's processes to start (~4 s on 2 cores), time in which
    the driver's own start-up work (~2 s) fits. An unusable MLflow store is still what is said
    first. (experiment id, plan line or None)."""

    def meanwhile() -> tuple[str, str | None]:
        experiment_id = mlflow_experiment(settings.tracking_uri, settings.name, settings.study_dir)
        return experiment_id, plan_line(settings, ds) if say_plan else None

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-start") as pool:
        early = pool.submit(meanwhile)
        try:
            init_ray(settings)
        except BaseException:
            if isinstance(early.exception(), ConfigError):  # waits for it
                raise early.exception() from None
            raise
        return early.result()


def _run(settings: StudySettings, ds: Dataset, ranges: Ranges, experiment_id: str,
         out: Output) -> StudyResult:
    study_dir = settings.study_dir
    check_trial_fits(settings.cpus_per_trial, local=settings.address is None, gpus=settings.gpus_per_trial)
    check_shared_storage(study_dir)
    rnd = round_count(study_dir)
    searcher_summary = run_search(settings, ds, ranges, experiment_id, out, rnd)
    best = best_per_cell(settings)
    if settings.rerank > 1:  # the top trials on extra seeds: the best by their mean (launch/rerank)
        best = run_rerank(settings, ds, experiment_id, out, rnd)
    paper = paper_point.paper_trials(study_dir)  # each cell's paper point
    for cell, b in best.items():
        b["paper_trial_id"] = paper.get(cell, {}).get("trial_id")
    atomic.write_json(study_dir / BEST, best, indent=2)
    cells = settings.cells
    # Each cell's parent run in MLflow: its best config now, the replicates' results at the end.
    record_cells(study_dir, settings.tracking_uri, experiment_id,
                 cell_summaries(cells, best, None if settings.replicates else [], out.dataset))
    replicates = run_replicates(settings, ds, best, experiment_id, out, rnd) if settings.replicates else []
    replicates, paper_rows = paper_point.split_rows(replicates)  # the best's, the paper point's
    if settings.replicates:
        record_cells(study_dir, settings.tracking_uri, experiment_id,
                     cell_summaries(cells, best, replicates, out.dataset))
    # Anything an outage held back, and no run of a trial the study does not know.
    synced = final_sync(study_dir, settings.tracking_uri, experiment_id, study_trial_ids(study_dir))
    summary = {"study": settings.name, "data": settings.data, "fingerprint": ds.fingerprint,
               "cells": searcher_summary, "replicates": replicates,
               "objective": settings.objective, "paper_point": paper_rows,
               **({"gain": gain.summary(replicates, paper_rows, paper_point.kept(best, paper))}
                  if settings.paper_point else {}),
               "tracking_uri": settings.tracking_uri, "experiment_id": experiment_id,
               "mlflow_synced": synced}
    rounds = read_rounds(study_dir)
    if rounds:  # an extended study: what each round added, and when (the report shows it)
        rounds[-1]["ended"] = rounds[-1].get("ended") or now()
        summary["rounds"] = rounds
    atomic.write_json(study_dir / SUMMARY, summary, indent=2, default=str)
    if rounds:  # after the summary: a round is over once what it found is written
        atomic.write_json(study_dir / ROUNDS, rounds, indent=2)
    return StudyResult(study_dir, settings.tracking_uri, experiment_id, best, replicates, summary,
                       synced)


def resume_study(study_dir: str | Path, *, verbose: int = 1, **overrides: Any) -> StudyResult:
    """Continue an interrupted study (or an interrupted extension of one): finished trials are
    neither rerun nor logged twice."""
    study_dir = Path(study_dir).expanduser().absolute()
    rounds = read_rounds(study_dir)
    if rounds and rounds[-1].get("ended") is None and rounds[-1].get("study_yaml"):
        # An extension killed between writing its round and its settings: the round's are the truth.
        atomic.write_text(study_dir / SETTINGS, rounds[-1]["study_yaml"])
    return run_study(load_study(study_dir, **overrides), verbose=verbose)


def now() -> str:
    """The time as rounds.json records it (UTC, to the second)."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def study_trial_ids(study_dir: Path) -> set[str]:
    """Ids of every trial the study's Tune experiments recorded (read from disk, no Ray): from
    each phase's (every round's) newest whole snapshot, a kept generation where the newest is torn."""
    ids: set[str] = set()
    reranks = [study_dir / phase_dirname(RERANK, r) for r in range(1, round_count(study_dir) + 1)]
    for path in [path for _, path in phase_dirs(study_dir)] + reranks:
        ids |= set(tunestate.recorded_trials(path) or {})
    return ids


def _prepare_dir(study_dir: Path, settings: StudySettings) -> None:
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe = study_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError("storage", f"study directory not writable ({e.strerror})",
                          where=str(study_dir)) from None
    saved = study_dir / SETTINGS
    text = settings.to_yaml()
    # A launch refused before its first trial (no search/ yet) left no study to protect.
    if saved.exists() and saved.read_text() != text and (study_dir / SEARCH).exists():
        old = load_settings(saved)
        if (old.data, old.methods, old.missing, old.trials, old.epochs) != (
            settings.data, settings.methods, settings.missing, settings.trials, settings.epochs):
            raise ConfigError("name", "a different study already lives here; choose another --name",
                              where=str(study_dir))
    atomic.write_text(saved, text)


__all__ = ["PHASES", "ListSearcher", "StudyInterrupted", "StudyResult", "StudySettings",
           "max_concurrent", "resume_study", "run_study", "study_trial_ids", "trial_resources"]
