"""MLflow tracking of a study: one run per trial and per replicate, nothing lost, nothing twice.

Why not Ray's ``MLflowLoggerCallback``: it keeps the trial -> run map in memory, so a
restarted driver opens a second run for every resumed trial, and an MLflow outage
fails the logging for good. Here every event first goes to a journal in the study
directory (``mlflow-journal.jsonl``, the source of truth), then to MLflow. Writing to
MLflow is idempotent: a trial's run is found again by its ``tagtune.trial_id`` tag, and
a step that the run already has is skipped. So replaying the journal (at the end of a
study, or ``tagtune mlflow sync STUDY_DIR``) repairs whatever an outage or a crash left
out, and replaying twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tagtune.launch.preflight import first_line, quick_mlflow_http
from tagtune.study.config import ConfigError, to_dict
from tagtune.study.trainable import STUDY_KEYS, train_config

log = logging.getLogger(__name__)
JOURNAL = "mlflow-journal.jsonl"
TRIAL_TAG = "tagtune.trial_id"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The result's finite numbers (bools as 0/1), minus Ray's own bookkeeping."""
    skip = {"timestamp", "pid", "time_this_iter_s", "time_total_s", "time_since_restore",
            "iterations_since_restore", "training_iteration", "done", "should_checkpoint"}
    out = {}
    for k, v in result.items():
        if k in skip or isinstance(v, str) or k == "config":
            continue
        if isinstance(v, bool | int | float) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


class Tracker:
    """Writes journal events to MLflow idempotently."""

    def __init__(self, tracking_uri: str, experiment_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self._runs: dict[str, str] = {}
        self._steps: dict[str, set[int]] = {}

    def run_id(self, trial_id: str, event: dict | None = None) -> str:
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
            steps = {m.step for m in self.client.get_metric_history(run_id, "epoch")}
        else:
            if event is None or event["op"] != "start":
                raise LookupError(f"no run for trial {trial_id} and no start event")
            tags = {TRIAL_TAG: trial_id, **{k: str(v) for k, v in event["tags"].items()}}
            run = self.client.create_run(self.experiment_id, run_name=event["name"], tags=tags)
            run_id = run.info.run_id
            steps = set()
        self._runs[trial_id], self._steps[run_id] = run_id, steps
        return run_id

    def apply(self, event: dict) -> None:
        from mlflow.entities import Metric, Param

        run_id = self.run_id(event["trial_id"], event)
        op = event["op"]
        if op == "start":
            have = self.client.get_run(run_id).data.params
            params = [Param(k, str(v)[:6000]) for k, v in event["params"].items() if k not in have]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        elif op == "result":
            step = int(event["step"])
            if step in self._steps[run_id]:
                return
            ms = [Metric(k, v, event["ts"], step) for k, v in event["metrics"].items()]
            # "epoch" last: its presence marks the step as fully logged.
            ms.sort(key=lambda m: m.key == "epoch")
            for i in range(0, len(ms), 200):
                self.client.log_batch(run_id, metrics=ms[i:i + 200])
            self._steps[run_id].add(step)
        elif op == "end":
            self.client.set_terminated(run_id, status=event["status"])


class MlflowJournalCallback(Callback):
    """Ray Tune callback: journal every trial event, then write it to MLflow if it answers.

    MLflow down never slows the study: its HTTP calls fail fast (``quick_mlflow_http``),
    and after a failure MLflow is left alone for ``retry_after_s`` (events only go to the
    journal). The first call that succeeds again replays the journal for this experiment's
    trials, so runs started during the outage are complete before the study ends.
    """

    def __init__(self, study_dir: str | Path, tracking_uri: str, experiment_id: str, phase: str,
                 name_prefix: str = "", retry_after_s: float = 10.0):
        self.journal = Path(study_dir) / JOURNAL
        self.tracking_uri, self.experiment_id, self.phase = tracking_uri, experiment_id, phase
        self.name_prefix = name_prefix
        self.retry_after_s = retry_after_s
        self._tracker: Tracker | None = None
        self._behind = False  # an event did not reach MLflow: replay the journal when it answers
        self._retry_at = 0.0
        self.failures = 0

    def _emit(self, event: dict, trials) -> None:
        event["ts"] = int(time.time() * 1000)
        with open(self.journal, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if time.monotonic() < self._retry_at:
            return
        try:
            with quick_mlflow_http():
                if self._tracker is None:
                    self._tracker = Tracker(self.tracking_uri, self.experiment_id)
                if self._behind:
                    n = replay(self.journal, self._tracker, {t.trial_id for t in trials})
                    log.warning("MLflow answers again; replayed %d journal events", n)
                    self._behind = False
                else:
                    self._tracker.apply(event)
        except Exception as e:  # MLflow down: the journal keeps it; a replay writes it later
            self.failures += 1
            self._tracker, self._behind = None, True
            self._retry_at = time.monotonic() + self.retry_after_s
            if self.failures == 1 or self.failures % 50 == 0:
                log.warning("MLflow unreachable (%s); events are kept in %s", first_line(e, 200),
                            self.journal)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        # The full resolved config, so that every run has the same params whatever the method.
        resolved = to_dict(train_config(trial.config))
        study_keys = {k: trial.config[k] for k in STUDY_KEYS if k in trial.config}
        tags = {"method": resolved["method"], "proportion": resolved["missing"],
                "cell": study_keys.get("cell"), "seed": resolved["seed"], "phase": self.phase,
                "trial_id": trial.trial_id}
        name = f"{resolved['method']}__{study_keys.get('cell')}__{self.phase}__{trial.trial_id}"
        self._emit({"op": "start", "trial_id": trial.trial_id, "name": self.name_prefix + name,
                    "tags": tags, "params": flatten({**resolved, **study_keys})}, trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._emit({"op": "result", "trial_id": trial.trial_id, "step": result["training_iteration"],
                    "metrics": numeric_metrics(result)}, trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._emit({"op": "end", "trial_id": trial.trial_id, "status": "FINISHED"}, trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._emit({"op": "end", "trial_id": trial.trial_id, "status": "FAILED"}, trials)


def sync(study_dir: str | Path, tracking_uri: str, experiment_id: str, trial_ids: set[str]) -> int:
    """Make the MLflow experiment hold exactly the study's trials; returns events replayed.

    ``trial_ids`` are the trials the study's Tune experiments know. A driver killed between
    two experiment checkpoints can leave runs of trials that Tune never recorded (the resumed
    study hands their budget out again, under new ids): those runs are deleted, so that no
    trial counts twice, and so is any second run of one trial (the oldest is kept). Then the
    journal is replayed for the known trials.
    """
    tracker = Tracker(tracking_uri, experiment_id)
    client = tracker.client
    kept: set[str] = set()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_TAG}` != ''",
                              max_results=50000, order_by=["attributes.start_time ASC"])
    for run in runs:
        trial_id = run.data.tags.get(TRIAL_TAG)
        # A second run of one trial: a create_run that reached MLflow but whose answer was lost.
        if trial_id not in trial_ids or trial_id in kept:
            client.delete_run(run.info.run_id)
        kept.add(trial_id)
    return replay(Path(study_dir) / JOURNAL, tracker, trial_ids)


def replay(journal: Path, tracker: Tracker, trial_ids: set[str]) -> int:
    """Apply the journal's events of ``trial_ids`` in order (idempotent); returns their number."""
    if not journal.exists():
        return 0
    n = 0
    for line in journal.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash mid-write
            continue
        if event.get("trial_id") in trial_ids:
            tracker.apply(event)
            n += 1
    return n


def mlflow_experiment(tracking_uri: str, name: str, study_dir: Path) -> str:
    """Create (or find) the study's experiment, its artifacts at an absolute path."""
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)  # an unsupported URI fails here already
        with quick_mlflow_http():
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            return client.create_experiment(name, artifact_location=(study_dir / "mlartifacts").as_uri())
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError("mlflow_uri", f"MLflow store not usable ({first_line(e)})",
                          where=tracking_uri) from None


def final_sync(study_dir: Path, tracking_uri: str, experiment_id: str, trial_ids: set[str]) -> bool:
    """``sync`` at the end of a study; False if MLflow does not answer.

    MLflow still down at the end does not fail a finished study: the journal keeps every
    event, and ``tagtune mlflow sync STUDY_DIR`` replays it once the server is back.
    """
    try:
        with quick_mlflow_http():
            sync(study_dir, tracking_uri, experiment_id, trial_ids)
        return True
    except Exception as e:  # noqa: BLE001 -- any MLflow/network failure means "later"
        log.warning("MLflow unreachable at the end of the study (%s); run `tagtune mlflow sync %s` "
                    "when it is back", first_line(e), study_dir)
        return False
