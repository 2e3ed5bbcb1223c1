"""Running a study: search every cell, then retrain each cell's best config with K seeds.

``run_study(settings)`` is the plain function under ``tagtune study``; ``resume_study(dir)``
under ``tagtune study resume``. What a study directory holds: :mod:`tagtune.study.folder`.

Launch input is checked before Ray starts (tagtune.launch.preflight); on a multi-node
cluster the study directory must be on storage every node sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from tagtune.launch import fusion
from tagtune.launch.display import (
    DisplayCallback,
    FiniteTBXLogger,
    LibraryLogs,
    StudyDisplay,
    earlier_work,
    library_logs,
)
from tagtune.launch.preflight import (
    check_address,
    check_mlflow,
    check_shared_storage,
    check_trial_fits,
    enable_token_auth,
)
from tagtune.launch.scheduler import CellASHA
from tagtune.launch.searcher import Cell, CellSearcher
from tagtune.launch.snapshots import SnapshotKeeper
from tagtune.launch.tracking import (
    SUPERSEDED_TAG,
    MlflowJournalCallback,
    cell_summaries,
    final_sync,
    journal_outcomes,
    mlflow_experiment,
    record_cells,
    tag_trials,
)
from tagtune.search_spaces import Ranges, load_ranges
from tagtune.study import atomic, tunestate
from tagtune.study.config import ConfigError
from tagtune.study.data import Dataset, load
from tagtune.study.errors import first_line
from tagtune.study.folder import (
    BEST,
    JOURNAL,
    OPTUNA_DB,
    PHASES,
    REPLICATE,
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
    superseded,
    train_config,
    trial_dirname,
    trial_id_of,
)
from tagtune.study.methods import check_supported
from tagtune.study.trainable import TRIAL_STATE, train_trial

log = logging.getLogger(__name__)
METRIC, MODE = "val/best_loss", "min"  # set once, on TuneConfig (scheduler and searcher get them from there)


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


def run_study(settings: StudySettings, *, verbose: int = 1) -> StudyResult:
    """Run (or continue) the study described by ``settings``; returns what it found.

    Bad launch input (search ranges, an unreachable cluster or tracking server, an
    unwritable or, on a multi-node cluster, unshared study directory, a bad data file,
    methods the data cannot train, a trial larger than any node of a local Ray) is a
    one-line ConfigError/DataError before any trial starts. Stopped early (Ctrl-C), it
    raises StudyInterrupted: the state is saved, ``resume_study`` continues it.

    ``verbose``: 0 = nothing on the terminal but errors; 1 = the live display
    (tagtune.launch.display); 2 = Ray Tune's trial table instead, and the libraries' log
    lines on the terminal. At 0 and 1 those lines go to ``STUDY_DIR/study.log``.
    """
    study_dir = settings.study_dir
    ranges = load_ranges(settings.search_space) if settings.search_space else Ranges()
    check_address(settings.address)
    check_mlflow(settings.tracking_uri)
    ds = load(settings.data)
    check_supported(settings.methods, ds.observation)
    rnd = round_count(study_dir)  # the round to run: the last one begun (1: never extended)
    for phase in PHASES:  # before anything is written: a refusal leaves every file as it was
        _restore_checked(settings, phase_dirname(phase, rnd))
    _prepare_dir(study_dir, settings)
    with library_logs(study_dir, enabled=verbose < 2) as logs:
        experiment_id = mlflow_experiment(settings.tracking_uri, settings.name, study_dir)
        _init_ray(settings)
        if logs is not None:
            logs.apply()  # ray.init installs Ray's own handlers
        display = StudyDisplay(settings.methods, settings.missing,
                               earlier=earlier_work(study_dir)) if verbose == 1 else None
        out = _Output(verbose, display, {"name": ds.name, "digest": ds.fingerprint,
                                         "source": settings.data}, logs)
        try:
            return _run(settings, ds, ranges, experiment_id, out)
        finally:
            if out.display is not None:
                out.display.stop()


@dataclass
class _Output:
    """What a study shows and logs besides its results."""

    verbose: int
    display: StudyDisplay | None
    dataset: dict[str, str]
    """The data file as MLflow's dataset: name, digest (the fingerprint), source (the path)."""
    logs: LibraryLogs | None = None
    """Where the libraries' output goes (None: the terminal)."""


def _run(settings: StudySettings, ds: Dataset, ranges: Ranges, experiment_id: str,
         out: _Output) -> StudyResult:
    study_dir = settings.study_dir
    check_trial_fits(settings.cpus_per_trial, local=settings.address is None, gpus=settings.gpus_per_trial)
    check_shared_storage(study_dir)
    rnd = round_count(study_dir)
    searcher_summary = _search(settings, ds, ranges, experiment_id, out, rnd)
    best = _best_per_cell(settings)
    atomic.write_json(study_dir / BEST, best, indent=2)
    cells = settings.cells
    # Each cell's parent run in MLflow: its best config now, the replicates' results at the end.
    record_cells(study_dir, settings.tracking_uri, experiment_id,
                 cell_summaries(cells, best, None if settings.replicates else [], out.dataset))
    replicates = _replicate(settings, ds, best, experiment_id, out, rnd) if settings.replicates else []
    if settings.replicates:
        record_cells(study_dir, settings.tracking_uri, experiment_id,
                     cell_summaries(cells, best, replicates, out.dataset))
    # Anything an outage held back, and no run of a trial the study does not know.
    synced = final_sync(study_dir, settings.tracking_uri, experiment_id, study_trial_ids(study_dir))
    summary = {"study": settings.name, "data": settings.data, "fingerprint": ds.fingerprint,
               "cells": searcher_summary, "replicates": replicates,
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
    for _, path in phase_dirs(study_dir):
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


def _init_ray(settings: StudySettings) -> None:
    if ray.is_initialized():
        return
    if settings.address:
        enable_token_auth()
        try:
            ray.init(address=settings.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            problem = first_line(e)
            if isinstance(e.__cause__, ray.exceptions.AuthenticationError):
                problem = ("token authentication refused: give the cluster's token in "
                           "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
            raise ConfigError("address", f"cannot reach the Ray cluster ({problem})",
                              where=settings.address) from None
    else:
        # address="local": a fresh instance of our own. Without it, ray.init joins whatever
        # Ray's temp dir names in ray_current_cluster -- a running `ray start`, or a dead head
        # whose file was never removed (then it fails: num_cpus is refused when joining).
        # Joining a running cluster is asked for with --address auto.
        ray.init(address="local", num_cpus=settings.num_cpus or default_num_cpus(),
                 include_dashboard=False, log_to_driver=False)


def default_num_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _trainable(settings: StudySettings, ds: Dataset, ended: dict[str, dict] | None = None):
    # with_parameters puts the dataset in the object store once; every trial reads it there.
    # study_dir: where the study lives now (a moved study resumes), for a reused replicate's
    # checkpoint, which its config names relative to it. ended: trials a resumed snapshot had
    # not seen end and the journal has (their last results), reported again, not retrained.
    cache = str(settings.teacher_cache) if settings.teacher_cache else None
    if settings.fuse_size > 1:  # fused: light member trials, the resources are their stacks'
        stacks = fusion.registry(ds, settings.fuse_size, trial_resources(settings), cache)
        return tune.with_resources(tune.with_parameters(fusion.member_trial, stacks=stacks,
                                                        study_dir=str(settings.study_dir),
                                                        ended=ended or None),
                                   fusion.MEMBER_RESOURCES)
    return tune.with_resources(tune.with_parameters(train_trial, dataset=ds, teacher_cache=cache,
                                                    study_dir=str(settings.study_dir),
                                                    ended=ended or None),
                               trial_resources(settings))


def trial_resources(settings: StudySettings) -> dict[str, float]:
    """What one trial asks Ray for: its CPUs, and its share of a GPU where it has one (Ray then
    sets the trial's CUDA_VISIBLE_DEVICES to the card it assigned)."""
    gpus = {"gpu": settings.gpus_per_trial} if settings.gpus_per_trial > 0 else {}
    return {"cpu": settings.cpus_per_trial, **gpus}


def max_concurrent(settings: StudySettings) -> int | None:
    """Fused trials: as many member trials at once as the stacks that fit can hold (a member asks
    Ray for no CPU, so Tune alone would start every trial of the phase at once)."""
    if settings.fuse_size <= 1:
        return None
    cluster = ray.cluster_resources()
    stacks = int(cluster.get("CPU", 1) // settings.cpus_per_trial)
    if settings.gpus_per_trial > 0:
        stacks = min(stacks, int(cluster.get("GPU", 0) // settings.gpus_per_trial))
    return max(1, stacks) * settings.fuse_size


def _run_config(settings: StudySettings, phase: str, experiment_id: str, out: _Output) -> tune.RunConfig:
    # phase: the experiment's directory (search, search.2, ...); MLflow's tag is its kind.
    tracking = MlflowJournalCallback(settings.study_dir, settings.tracking_uri, experiment_id,
                                     _kind(phase), dataset=out.dataset)
    return tune.RunConfig(
        name=phase,
        storage_path=str(settings.study_dir),
        # The keeper last: Tune asks callbacks for their state after writing its own snapshot.
        callbacks=[tracking, DisplayCallback(), FiniteTBXLogger(),  # FiniteTBXLogger: no inf warnings
                   SnapshotKeeper(settings.study_dir / phase)],
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=1 if out.verbose >= 2 else 0,  # Tune's trial table: only with --verbose
    )


class StudyInterrupted(Exception):
    """The study stopped before its end (Ctrl-C: Ray Tune saved its state); resume continues it."""

    def __init__(self, study_dir: Path, phase: str):
        self.study_dir = study_dir
        saved = _resumable(study_dir / phase)
        state = "its state saved" if saved else "its state could not be saved whole (the last " \
            "snapshot is torn and none is kept)"
        then = f"continue with: tagtune study resume {study_dir}" if saved else \
            "a resume will start that phase again"
        super().__init__(f"{study_dir}: interrupted in the {phase} phase, {state}; {then}")


def _resumable(phase_dir: Path) -> bool:
    """Whether a resume can continue ``phase_dir``: a whole newest snapshot, or a kept one."""
    if tunestate.newest(phase_dir, tunestate.EXPERIMENT_STATE) is not None and not tunestate.torn(phase_dir):
        return True
    return any(tunestate.whole(g) for g in tunestate.generations(phase_dir))


def _restore_checked(settings: StudySettings, phase: str) -> None:
    """Check what Tuner.restore is about to read; where an interruption tore it, put the last
    whole snapshot back (one line says so); where none is whole, refuse in one line."""
    if not (settings.study_dir / phase).is_dir():
        return
    try:
        repaired = tunestate.repair(settings.study_dir / phase)
    except tunestate.Unrecoverable as e:
        raise ConfigError(e.path.name, f"torn by the interruption ({e.why}) and no whole snapshot "
                          f"is kept in {phase}/{tunestate.LAST_GOOD}/ (a study started before "
                          f"tagtune kept them): this study cannot be resumed; its finished runs "
                          f"stay in MLflow and {JOURNAL}; run it again under a new --name",
                          where=str(e.path.parent)) from None
    if repaired is not None:  # said on the terminal whatever the verbosity: the study changed
        since = len(_ended_after_snapshot(settings, phase)) if repaired.generation else 0
        print(f"note: {repaired.message(phase, since)}", file=sys.stderr)


def _ended_after_snapshot(settings: StudySettings, phase: str) -> dict[str, dict]:
    """The trials the snapshot a resume starts from has not seen end but the journal has (they
    ended between that snapshot and the interruption), with their last reported metrics."""
    recorded = tunestate.recorded_trials(settings.study_dir / phase) or {}
    outcomes = journal_outcomes(settings.study_dir / JOURNAL)
    return {tid: outcomes[tid][1] for tid, status in recorded.items()
            if status in tunestate.UNFINISHED and tid in outcomes and outcomes[tid][0] == "FINISHED"}


def _fit_or_resume(settings, ds, phase, make_tuner, expected: int, out: _Output,
                   experiment_id: str) -> tune.ResultGrid:
    """The phase's ``expected`` trials, all ended; StudyInterrupted if Tune returned early."""
    path = settings.study_dir / phase
    ended: dict[str, str] = {}
    best: dict[str, float] = {}
    if tune.Tuner.can_restore(path):
        # What the display starts from (read only where there is a display).
        for trial in tune.ExperimentAnalysis(str(path)).trials if out.display is not None else ():
            last = trial.last_result or {}
            if trial.status in ("TERMINATED", "ERROR"):
                ended[trial.trial_id] = trial.config["cell"]
            if math.isfinite(last.get(METRIC, math.inf)):
                best[trial.config["cell"]] = min(last[METRIC], best.get(trial.config["cell"], math.inf))
        tuner = tune.Tuner.restore(str(path), trainable=_trainable(
            settings, ds, _ended_after_snapshot(settings, phase)),
            resume_unfinished=True, resume_errored=True)
        # Tune restores the run config, callbacks included, from tuner.pkl as pickled when the
        # phase began: a moved study's callbacks would still write where it lived then (its
        # journal, its MLflow store). This run's callbacks, for this run's study directory.
        if tuner._local_tuner is not None:  # None only under Ray Client, which pickles anew
            tuner._local_tuner._run_config.callbacks = _run_config(
                settings, phase, experiment_id, out).callbacks
    else:
        tuner = make_tuner()
    if out.display is not None:
        out.display.start_phase(_kind(phase), expected, ended, best)
    try:
        with out.logs.stdout() if out.logs is not None else contextlib.nullcontext():
            results = tuner.fit()
    finally:
        fusion.close_registries()  # fused trials' stacks end with their phase
    if out.display is not None:
        out.display.stop()
    # Ray Tune answers Ctrl-C by saving the experiment and returning what it has: trials
    # still pending or running, or never created. Going on would pick "best" configs and
    # write a summary from half a search.
    if results.num_terminated + results.num_errors < expected:
        raise StudyInterrupted(settings.study_dir, phase)
    return results


def _kind(phase: str) -> str:
    """search or replicate, for an experiment directory of any round (``search.2``)."""
    return phase.split(".")[0]


def _search(settings: StudySettings, ds: Dataset, ranges: Ranges, experiment_id: str,
            out: _Output, rnd: int = 1) -> dict:
    cells = [Cell(m, p) for m in settings.methods for p in settings.missing]
    searcher = CellSearcher(cells, trials_per_cell=settings.trials, ranges=ranges,
                            preset=settings.preset, seed=settings.seed,
                            base_config=settings.base_config(phase="search"), block=settings.fuse_size)
    expected, earlier, previous = len(cells) * settings.trials, None, None
    if rnd > 1:
        # A later round: each existing cell's Optuna study goes on (TPE sees every earlier trial)
        # and only the added trials are handed out; its ASHA knows the earlier trials' rungs.
        previous = _final_searcher(settings, ranges, rnd - 1)
        expected = sum(searcher.continue_from(previous).values())
        earlier = _earlier_reports(settings, rnd)
    dirname = phase_dirname(SEARCH, rnd)

    def make_tuner() -> tune.Tuner:
        return tune.Tuner(
            _trainable(settings, ds),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, search_alg=searcher, num_samples=expected,
                max_concurrent_trials=max_concurrent(settings),
                reuse_actors=True,  # a worker process per trial would spend seconds importing torch
                trial_dirname_creator=_trial_dirname,
                scheduler=CellASHA(max_t=settings.epochs, grace_period=settings.grace_period,
                                   reduction_factor=settings.reduction_factor, earlier=earlier),
            ),
            run_config=_run_config(settings, dirname, experiment_id, out),
        )

    if expected:  # an extension by replicates only adds no trial: no search experiment
        _fit_or_resume(settings, ds, dirname, make_tuner, expected, out, experiment_id)
    # The searcher Tune ran may be one it restored from disk: read its final state back from
    # the experiment directory, then keep each cell's Optuna study for the analysis.
    final = _final_searcher(settings, ranges, rnd) if expected else previous
    # Written whole: a kill while Optuna builds its tables would leave a store it cannot open.
    with atomic.atomic_path(settings.study_dir / OPTUNA_DB) as tmp:
        final.export(f"sqlite:///{tmp}")
    counts = _cell_counts(settings)
    return {cell: {**counts.get(cell, {}), "optuna": info} for cell, info in final.summary().items()}


def _final_searcher(settings: StudySettings, ranges: Ranges, rnd: int) -> CellSearcher:
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


def _search_trials(settings: StudySettings, before: int | None = None):
    """(trial id, trial directory) of every recorded search trial, rounds before ``before``."""
    for r, (_, path) in enumerate(phase_dirs(settings.study_dir, SEARCH), start=1):
        if (before is not None and r >= before) or not path.is_dir():
            continue
        recorded = tunestate.recorded_trials(path)
        for trial_dir in sorted(p for p in path.iterdir() if (p / "params.json").is_file()):
            tid = trial_id_of(trial_dir.name)
            if recorded is None or tid in recorded:
                yield tid, trial_dir


def _earlier_reports(settings: StudySettings, rnd: int) -> dict[str, dict[str, list]]:
    """Per cell, per search trial of the rounds before ``rnd``: its (budget, metric) reports."""
    out: dict[str, dict[str, list]] = {}
    for tid, trial_dir in _search_trials(settings, before=rnd):
        cell = json.loads((trial_dir / "params.json").read_text())["cell"]
        reports = []
        path = trial_dir / "result.json"
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            value = row.get(METRIC)
            if "budget" in row and isinstance(value, int | float) and math.isfinite(value):
                reports.append((row["budget"], float(value)))
        out.setdefault(cell, {})[tid] = reports
    return out


def _trial_dirname(trial) -> str:
    return trial_dirname(trial.config["cell"], trial.trial_id)


def _cell_counts(settings: StudySettings) -> dict[str, dict[str, int]]:
    """Per cell, its search trials over every round: ran, completed, stopped early, failed."""
    counts: dict[str, dict[str, int]] = {}
    for _, path in phase_dirs(settings.study_dir, SEARCH):
        for trial in tune.ExperimentAnalysis(str(path)).trials if path.is_dir() else ():
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


def _best_per_cell(settings: StudySettings) -> dict[str, dict[str, Any]]:
    """Per cell, the trial with the lowest selection loss among those that ran to the end, over
    every round's search."""
    trials = [t for _, path in phase_dirs(settings.study_dir, SEARCH) if path.is_dir()
              for t in tune.ExperimentAnalysis(str(path), default_metric=METRIC,
                                               default_mode=MODE).trials]
    best: dict[str, dict[str, Any]] = {}
    for trial in trials:
        last = trial.last_result or {}
        if not last.get("complete") or METRIC not in last:
            continue  # cut short by ASHA: its score is from a smaller budget
        cell = trial.config["cell"]
        if cell not in best or last[METRIC] < best[cell]["value"]:
            best[cell] = {"value": last[METRIC], "trial_id": trial.trial_id, "config": dict(trial.config)}
    missing = set(settings.cells) - set(best)
    if missing:
        log.warning("no trial ran to the end in cells %s: they get no replicates", sorted(missing))
    return dict(sorted(best.items()))


def _reusable(settings: StudySettings, cell: str, b: dict[str, Any]) -> tuple[int, Path] | None:
    """The best trial's seed and its last checkpoint relative to the study directory (the final
    state of a run that went to the end; Tune keeps the last two), or None where it has none."""
    seed = train_config(b["config"]).seed
    done = sorted(p for _, path in phase_dirs(settings.study_dir, SEARCH)
                  for p in (path / trial_dirname(cell, b["trial_id"])).glob("checkpoint_*/" + TRIAL_STATE))
    if not done:
        return None
    return seed, done[-1].parent.relative_to(settings.study_dir)


class ListSearcher(Searcher):
    """Hands out a fixed list of configs, in order, once each (the replicate phase)."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self.configs, self.next = configs, 0

    def suggest(self, trial_id: str):
        if self.next >= len(self.configs):
            return Searcher.FINISHED
        self.next += 1
        return self.configs[self.next - 1]

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        # Tune renames it into place; fsynced, so the rename never exposes an empty file.
        atomic.write_json(checkpoint_path, {"configs": self.configs, "next": self.next})

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.configs, self.next = state["configs"], state["next"]


def _replicate(settings, ds, best, experiment_id, out: _Output, rnd: int = 1) -> list[dict[str, Any]]:
    """The replicates of each cell's best config; in a later round only what it lacks: every seed
    of a cell that is new or whose best trial changed (its earlier replicates superseded), the
    added seeds of the others. Returns the rows of every round's replicates that count."""
    seeds = {cell: range(settings.replicates) for cell in best}
    if rnd > 1:
        record = read_rounds(settings.study_dir)[rnd - 1]
        rerun = {c for c, b in best.items() if record["previous_best"].get(c) != b["trial_id"]}
        seeds = {cell: range(0 if cell in rerun else record["previous_replicates"], settings.replicates)
                 for cell in best}
        _supersede(settings, experiment_id, rnd, rerun)
    configs = []
    for cell, b in best.items():
        reusable = _reusable(settings, cell, b) if settings.reuse_best_replicate else None
        for r in seeds[cell]:
            configs.append({**b["config"], "phase": "replicate", "replicate": r,
                            "seed": settings.seed + r, "cell": cell})
            if reusable is not None and reusable[0] == settings.seed + r:
                configs[-1]["reused_checkpoint"] = str(reusable[1])
    dirname = phase_dirname(REPLICATE, rnd)

    def make_tuner() -> tune.Tuner:
        return tune.Tuner(
            _trainable(settings, ds),
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=ListSearcher(configs),
                                        num_samples=len(configs), reuse_actors=True,
                                        max_concurrent_trials=max_concurrent(settings),
                                        trial_dirname_creator=_trial_dirname),
            run_config=_run_config(settings, dirname, experiment_id, out),
        )

    rows = _earlier_replicates(settings, rnd)
    if configs:  # an extension by trials whose best stayed adds no replicate
        results = _fit_or_resume(settings, ds, dirname, make_tuner, len(configs), out, experiment_id)
        rows += [_replicate_row(r.config, r.metrics or {}, None if r.error is None else str(r.error))
                 for r in results]
    return sorted(rows, key=lambda row: (row["cell"], row["seed"]))


def _replicate_row(config: dict, metrics: dict, error: str | None) -> dict[str, Any]:
    return {"cell": config["cell"], "method": config["method"], "missing": config["missing"],
            "seed": config["seed"], "error": None if error is None else error[:200],
            **{k: v for k, v in metrics.items() if k.startswith(("test", "val/"))}}


def _replicate_trials(settings: StudySettings, before: int):
    """Every recorded replicate trial of the rounds before ``before``: (trial id, Tune's trial)."""
    for r, (_, path) in enumerate(phase_dirs(settings.study_dir, REPLICATE), start=1):
        if r < before and path.is_dir():
            for trial in tune.ExperimentAnalysis(str(path)).trials:
                yield trial.trial_id, trial


def _earlier_replicates(settings: StudySettings, rnd: int) -> list[dict[str, Any]]:
    gone = superseded(settings.study_dir)
    return [_replicate_row(t.config, t.last_result or {}, "ERROR" if t.status == "ERROR" else None)
            for tid, t in _replicate_trials(settings, rnd) if tid not in gone]


def _supersede(settings: StudySettings, experiment_id: str, rnd: int, cells: set[str]) -> None:
    """The earlier replicates of ``cells`` (whose best config changed) no longer count: listed in
    the round's record (the analysis leaves them out) and tagged in MLflow, otherwise unchanged."""
    rounds = read_rounds(settings.study_dir)
    record = rounds[rnd - 1]
    gone = sorted(set(record.get("superseded", [])) | {
        tid for tid, t in _replicate_trials(settings, rnd) if t.config["cell"] in cells
        and tid not in superseded(settings.study_dir)})
    if gone != record.get("superseded", []):
        record["superseded"] = gone
        atomic.write_json(settings.study_dir / ROUNDS, rounds, indent=2)
    # Again on a resume (idempotent): a kill may have cut the tagging short.
    tag_trials(settings.study_dir, settings.tracking_uri, experiment_id, gone,
               {SUPERSEDED_TAG: "true"})


__all__ = ["PHASES", "StudyInterrupted", "StudyResult", "StudySettings", "resume_study", "run_study"]
