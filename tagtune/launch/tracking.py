"""MLflow tracking of a study: one run per trial and per replicate, nothing lost, nothing twice.

Shaped for comparing runs in the MLflow UI: one parent run per cell (named by the cell, e.g.
``mt@0.40``) holding the cell's best config, its validation score and the replicates' test
mean and sd; its search trials (``mt@0.40 #7``, the Optuna trial number) and replicates
(``mt@0.40 seed 2``) as child runs. A run's params are the ones its method reads (a B0 run has
no gamma; :data:`tagtune.study.config.METHOD_PARAMS`); every run has the data file as its
``mlflow.data`` dataset (digest = the file's fingerprint).

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

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tagtune.analysis.tracking import EXPERIMENT_KIND
from tagtune.launch import mlflow_bulk
from tagtune.launch.preflight import quick_mlflow_http
from tagtune.launch.rebind import Rebindable
from tagtune.launch.trainable import EARLIER, REPLAYED
from tagtune.study import atomic
from tagtune.study.config import ConfigError, applies, to_dict
from tagtune.study.errors import first_line
from tagtune.study.folder import (
    ARTIFACTS,
    JOURNAL,
    STUDY_KEYS,
    cell_id,
    parse_cell,
    proportion_text,
    train_config,
)

log = logging.getLogger(__name__)
TRIAL_TAG = "tagtune.trial_id"
CELL_TAG = "tagtune.cell_run"  # on a cell's parent run, value = the cell id
PARENT_TAG = "mlflow.parentRunId"  # what the UI nests child runs by
SUPERSEDED_TAG = "tagtune.superseded"  # a replicate a later round re-ran for a new best config
REPLAY_EVENTS = 2000  # a replay's events written together (at most one transaction each)


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

    def __init__(self, tracking_uri: str, experiment_id: str, bulk: bool = True):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self._runs: dict[str, str] = {}
        self._steps: dict[str, set[int]] = {}
        self._parents: dict[str, str] = {}  # cell id -> its parent run
        self._known: dict[str, str] | None = None  # trial id -> its run, when this tracker began
        # Runs this tracker created and has not ended: nothing in them but what it wrote (no
        # params, its tags, RUNNING), so their start and end need not read them back first.
        self._fresh: set[str] = set()
        self._store = mlflow_bulk.sql_store(self.client) if bulk else None

    def parent_id(self, cell: str) -> str:
        """The cell's parent run: found by its tag, created the first time."""
        if cell in self._parents:
            return self._parents[cell]
        found = self.client.search_runs([self.experiment_id], f"tags.`{CELL_TAG}` = '{cell}'",
                                        max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            run_id = found[0].info.run_id
        else:
            method, proportion = parse_cell(cell)
            tags = {CELL_TAG: cell, "cell": cell, "method": method,
                    "proportion": proportion_text(proportion)}
            run_id = self.client.create_run(self.experiment_id, run_name=cell, tags=tags).info.run_id
        self._parents[cell] = run_id
        return run_id

    def _lookup(self, trial_id: str) -> str | None:
        """The trial's run, if it has one (this tracker's, or one MLflow held when it began)."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        if self._known is None:
            # Every trial's run, found once: a search per new trial costs more the more runs the
            # experiment holds, and it is a new trial's run that is looked for (and not found).
            self._known = {}
            for run_id, trial_id in self.tagged(TRIAL_TAG):
                self._known.setdefault(trial_id, run_id)
        if trial_id not in self._known:
            return None
        run_id = self._known[trial_id]
        self._runs[trial_id] = run_id
        self._steps[run_id] = {m.step for m in self.client.get_metric_history(run_id, "epoch")}
        return run_id

    def tagged(self, tag: str) -> list[tuple[str, str]]:
        """(run id, tag value) of the experiment's runs that carry ``tag``, oldest first."""
        if self._store is not None:  # the tables alone, not every run loaded whole
            return mlflow_bulk.tagged_runs(self._store, self.experiment_id, tag)
        return [(run.info.run_id, run.data.tags[tag]) for run in self.client.search_runs(
            [self.experiment_id], f"tags.`{tag}` != ''", max_results=50000,
            order_by=["attributes.start_time ASC"])]

    def _start_tags(self, event: dict) -> dict[str, str]:
        tags = {TRIAL_TAG: event["trial_id"], **{k: str(v) for k, v in event["tags"].items()}}
        if cell := event["tags"].get("cell"):
            tags[PARENT_TAG] = self.parent_id(cell)
        return tags

    def _made(self, trial_id: str, run_id: str) -> None:
        self._runs[trial_id], self._steps[run_id] = run_id, set()
        self._fresh.add(run_id)

    def run_id(self, trial_id: str, event: dict | None = None) -> str:
        if (run_id := self._lookup(trial_id)) is not None:
            return run_id
        if event is None or event["op"] != "start":
            raise LookupError(f"no run for trial {trial_id} and no start event")
        # Started when the journal had the trial's start (a replay's run keeps its real times).
        run = self.client.create_run(self.experiment_id, run_name=event["name"], start_time=event.get("ts"),
                                     tags=self._start_tags(event))
        self._made(trial_id, run.info.run_id)
        return run.info.run_id

    def apply_events(self, events: list[dict]) -> None:
        """Journal events in their order. Where MLflow's store is SQL (:mod:`tagtune.launch.mlflow_bulk`):
        new trials' runs, results and those runs' ends in one transaction, whatever their number;
        else results in a row in one ``log_batch`` a run, the rest one by one."""
        if self._store is None:
            i = 0
            while i < len(events):
                j = i
                while j < len(events) and events[j]["op"] == "result":
                    j += 1
                if j > i + 1:
                    self.apply_results(events[i:j])
                else:
                    self.apply_cell(events[i]) if events[i]["op"] == "cell" else self.apply(events[i])
                    j = i + 1
                i = j
            return
        batch, steps = mlflow_bulk.Batch(), {}
        for event in events:
            op, trial_id = event["op"], event.get("trial_id")
            run_id = None if op == "cell" else self._lookup(trial_id)
            if op == "start" and run_id is None:
                run_id = mlflow_bulk.new_run_id()
                batch.new.append(mlflow_bulk.NewRun(
                    run_id, event["name"], self._start_tags(event), start_time=event.get("ts") or _now_ms(),
                    params=param_values(event["params"]),
                    dataset=event.get("dataset") and dataset_input(event["dataset"])))
                self._made(trial_id, run_id)
            elif op == "result" and run_id is not None:
                step, have = int(event["step"]), steps.setdefault(run_id, set())
                if step in self._steps[run_id] or step in have:
                    continue
                have.add(step)
                batch.metrics.setdefault(run_id, []).extend(_step_metrics(event))
            elif op == "end" and run_id in self._fresh:
                batch.ends[run_id] = (event["status"], event.get("ts") or _now_ms())
            else:  # a resumed trial's start or end, a tag, a cell: after what came before it
                self._write(batch, steps)
                batch, steps = mlflow_bulk.Batch(), {}
                self.apply_cell(event) if op == "cell" else self.apply(event)
        self._write(batch, steps)

    def _write(self, batch: mlflow_bulk.Batch, steps: dict[str, set[int]]) -> None:
        mlflow_bulk.write(self._store, self.experiment_id, batch)
        for run_id, have in steps.items():
            self._steps[run_id] |= have
        self._fresh.difference_update(batch.ends)

    def apply(self, event: dict) -> None:

        run_id = self.run_id(event["trial_id"], event)
        op = event["op"]
        if op == "start":
            if run_id in self._fresh:  # made just now, with its parent among its tags
                self._log_params(run_id, {}, event["params"])
            else:
                run = self.client.get_run(run_id)
                self._log_params(run_id, run.data.params, event["params"])
                cell = event["tags"].get("cell")
                # Set here too: a parent deduplicated by sync gets its children back.
                if cell and run.data.tags.get(PARENT_TAG) != (parent := self.parent_id(cell)):
                    self.client.set_tag(run_id, PARENT_TAG, parent)
            if event.get("dataset"):
                self._log_dataset(run_id, event["dataset"])
        elif op == "result":
            self.apply_results([event])
        elif op == "end":
            # Not again on a replay: a finished run keeps its end time (an extension's final
            # sync replays the whole journal, and earlier runs must stay as they were).
            if run_id in self._fresh or self.client.get_run(run_id).info.status != event["status"]:
                self.client.set_terminated(run_id, status=event["status"], end_time=event.get("ts"))
            self._fresh.discard(run_id)
        elif op == "tag":  # a tag added to a finished run; nothing else of it changes
            for k, v in event["tags"].items():
                self.client.set_tag(run_id, k, str(v))

    def apply_results(self, events: list[dict]) -> None:
        """Result events of trials already started, each run's steps in as few ``log_batch`` calls
        as MLflow's limit of 1,000 metrics a call allows; a step the run has is skipped."""
        per_run: dict[str, tuple[list, set[int]]] = {}
        for event in events:
            run_id = self.run_id(event["trial_id"], event)
            step = int(event["step"])
            ms, steps = per_run.setdefault(run_id, ([], set()))
            if step in self._steps[run_id] or step in steps:
                continue
            steps.add(step)
            ms.extend(_step_metrics(event))
        for run_id, (ms, steps) in per_run.items():
            for i in range(0, len(ms), 1000):
                self.client.log_batch(run_id, metrics=ms[i:i + 1000])
            self._steps[run_id] |= steps

    def apply_cell(self, event: dict) -> None:
        """A cell's summary onto its parent run: params once, metrics where they changed."""
        from mlflow.entities import Metric

        run_id = self.parent_id(event["cell"])
        data = self.client.get_run(run_id).data
        self._log_params(run_id, data.params, event.get("params", {}))
        ms = [Metric(k, v, event["ts"], 0) for k, v in event.get("metrics", {}).items()
              if data.metrics.get(k) != v]
        if ms:
            self.client.log_batch(run_id, metrics=ms)
        for k, v in event.get("tags", {}).items():
            if data.tags.get(k) != str(v):
                self.client.set_tag(run_id, k, str(v))
        if event.get("dataset"):
            self._log_dataset(run_id, event["dataset"])
        if event.get("status"):
            self.client.set_terminated(run_id, status=event["status"])

    def _log_params(self, run_id: str, have: dict[str, str], params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow refuses to change a param: one already there is kept.
        todo = [Param(k, v) for k, v in param_values(params).items() if k not in have]
        for i in range(0, len(todo), 100):
            self.client.log_batch(run_id, params=todo[i:i + 100])

    def _log_dataset(self, run_id: str, dataset: dict[str, str]) -> None:
        """The data file as the run's ``mlflow.data`` input (MLflow keeps one per run)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        d = dataset_input(dataset)
        entity = Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"], source=d["source"])
        self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag(k, v) for k, v in d["tags"].items()])])


def param_values(params: dict[str, Any]) -> dict[str, str]:
    """A run's params as MLflow keeps them: text, at most 6,000 characters."""
    return {k: str(v)[:6000] for k, v in params.items()}


def dataset_input(dataset: dict[str, str]) -> dict[str, Any]:
    """A journal event's dataset ({name, digest, source}) as a run's ``mlflow.data`` input."""
    return {"name": dataset["name"], "digest": dataset["digest"], "source_type": "local",
            "source": json.dumps({"uri": dataset["source"]}), "tags": {"mlflow.data.context": "train"}}


def _step_metrics(event: dict) -> list:
    """A result event's metrics, "epoch" last: its presence marks the step as fully logged."""
    from mlflow.entities import Metric

    return sorted((Metric(k, v, event["ts"], int(event["step"])) for k, v in event["metrics"].items()),
                  key=lambda m: m.key == "epoch")


def _now_ms() -> int:
    return int(time.time() * 1000)


def append(journal: Path, event: dict, sync: bool = True) -> None:
    """One event onto the journal, written before anything is sent to MLflow. ``sync``: fsynced
    too (else it is in the file for every process at once, and on the disk with the next sync:
    only a crash of the machine itself could lose it)."""
    event["ts"] = int(time.time() * 1000)
    with open(journal, "a+b") as f:
        # A kill mid-write leaves a last line without its newline: end it first, or this
        # event would be glued onto the torn one and lost with it.
        if f.tell() and os.pread(f.fileno(), 1, f.tell() - 1) != b"\n":
            f.write(b"\n")
        f.write(json.dumps(event).encode() + b"\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())


def sync_journal(journal: Path) -> None:
    """The journal's events so far on the disk (one fsync for every event appended unsynced)."""
    if journal.exists():
        atomic.fsync_file(journal)


def run_name(cell: str, config: dict[str, Any]) -> str:
    """Readable in a narrow column: ``mt@0.40 #7`` (Optuna's trial number), ``mt@0.40 seed 2``."""
    if config.get("phase") == "replicate":  # a paper point's replicate says so
        return f"{cell} seed {config['seed']}" + (" paper point" if config.get("point") else "")
    if config.get("phase") == "rerank":  # a search trial retrained on another seed
        return f"{cell} re-rank of {config.get('rerank_of')} seed {config['seed']}"
    number = config.get("optuna_trial")
    return cell if number is None else f"{cell} #{number}"


def run_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's params: its resolved TrainConfig, only the fields its method reads, and the
    study's keys; the same names across methods where they apply."""
    resolved = to_dict(train_config(config))
    own = {k: v for k, v in resolved.items() if applies(resolved["method"], k)}
    return flatten({**own, **{k: config[k] for k in STUDY_KEYS if k in config}})


_SENDING: weakref.WeakSet = weakref.WeakSet()  # the callbacks whose sender thread runs
# (tracking uri, experiment id) -> trials whose start, every result and end a journal callback of
# this process wrote to MLflow, without a failure of its sender: the final sync need not replay them.
_DELIVERED: dict[tuple[str, str], set[str]] = {}


def drain_senders() -> None:
    """Wait for every journal callback's sender thread (a phase that ended early -- Ctrl-C, an
    error -- gets no ``on_experiment_end``): nothing writes to MLflow behind what follows."""
    for callback in list(_SENDING):
        callback.drain()


class MlflowJournalCallback(Rebindable, Callback):
    """Ray Tune callback: journal every trial event, then write it to MLflow if it answers.

    MLflow never slows the study: Tune's loop only appends to the journal (the truth); a thread
    of this callback's own writes the events to MLflow in order, so a trial's start or a batch of
    results does not wait for MLflow's database (tens of milliseconds a run on SQLite: the
    driver's largest cost per trial). Its HTTP calls fail fast (``quick_mlflow_http``), and after a
    failure MLflow is left alone for ``retry_after_s`` (events only go to the journal). The first
    call that succeeds again replays the journal for this experiment's trials, so runs started
    during the outage are complete before the study ends. The phase's end waits for the thread:
    everything sent has reached MLflow (or the journal's replay owes it) when Tune returns; a
    process killed before that leaves it to the journal's replay (the study's final sync, or
    ``tagtune mlflow sync``).
    """

    def __init__(self, study_dir: str | Path, tracking_uri: str, experiment_id: str, phase: str,
                 name_prefix: str = "", retry_after_s: float = 10.0, dataset: dict | None = None,
                 batch_events: int = 1, batch_s: float = 0.0):
        self.journal = Path(study_dir) / JOURNAL
        self.tracking_uri, self.experiment_id, self.phase = tracking_uri, experiment_id, phase
        self.name_prefix = name_prefix
        self.dataset = dataset  # {name, digest, source}: the runs' mlflow.data input
        self.retry_after_s = retry_after_s
        self._tracker: Tracker | None = None
        self._behind = False  # an event did not reach MLflow: replay the journal when it answers
        self._retry_at = 0.0
        self.failures = 0
        # Events held for one MLflow call: up to batch_events of them, or batch_s seconds (a
        # study holds 64 or 2 s: the MLflow UI is that far behind; 1: each event when it comes).
        self.batch_events, self.batch_s = batch_events, batch_s
        self._pending: list[dict] = []
        self._flush_at = 0.0
        self._outbox: queue.SimpleQueue | None = None  # (events, trial ids) for the sender thread
        self._sender: threading.Thread | None = None
        self._started: set[str] = set()  # trials whose start the sender wrote, first of their events
        self._delivered: set[str] = set()  # ... and then every result and the end
        self._earlier: set[str] | None = None  # trials with events journalled before this driver's

    def get_state(self) -> None:
        # Tune asks for callbacks' state as it snapshots the experiment: what the snapshot says
        # ended or ran must be in the journal on disk by then.
        sync_journal(self.journal)
        return None

    def on_experiment_end(self, trials, **info) -> None:
        self._flush(trials, due=True)
        self.drain()

    def drain(self) -> None:
        """Wait until the sender thread has written everything sent so far, and end it."""
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join()
            self._outbox = self._sender = None
            _SENDING.discard(self)
        if self.failures == 0:  # else a replay may owe any of them something
            _DELIVERED.setdefault((self.tracking_uri, self.experiment_id), set()).update(self._delivered)

    def __getstate__(self) -> dict:
        # Pickled into Tune's tuner.pkl: results held back and the sender belong to this driver only.
        return {**self.__dict__, "_tracker": None, "_pending": [], "_outbox": None, "_sender": None,
                "_started": set(), "_delivered": set(), "_earlier": None}

    def _emit(self, event: dict, trials) -> None:
        # Journalled now; a start or an end on the disk at once, since a resume reads the trials'
        # ends from the journal, an epoch's result fsynced with the batch (a result is reported
        # again from the trial's checkpoint if the driver dies before Tune's next snapshot). Sent
        # to MLflow with others: every trial's start, results and end in one transaction where
        # the store allows (tagtune.launch.mlflow_bulk), ~5 ms a trial against ~50 one by one.
        result = event["op"] == "result"
        if self._earlier is None:  # what a driver before this one journalled (a resumed study)
            self._earlier = {e.get("trial_id") for e in read_journal(self.journal)}
        append(self.journal, event, sync=not result)
        self._pending.append(event)
        self._flush(trials)

    def _flush(self, trials, due: bool = False) -> None:
        """Send what is held if the batch is full or its time has come (or ``due``)."""
        if not self._pending or not due and (len(self._pending) < self.batch_events
                                             and time.monotonic() < self._flush_at):
            return
        sync_journal(self.journal)
        self._send(self._pending, trials)
        self._pending = []
        self._flush_at = time.monotonic() + self.batch_s

    def on_step_end(self, iteration, trials, **info) -> None:
        # Tune's loop turns many times a second: what is held goes out on time even when no trial
        # reports (epochs of minutes), so MLflow is never more than batch_s behind.
        self._flush(trials)

    def _send(self, events: list[dict], trials) -> None:
        """Hand ``events`` (journalled already) to the sender thread."""
        if self._sender is None:
            self._outbox = queue.SimpleQueue()
            self._sender = threading.Thread(target=self._send_all, name="tagtune-mlflow", daemon=True)
            self._sender.start()
            _SENDING.add(self)
        self._outbox.put((events, {t.trial_id for t in trials}))

    def _send_all(self) -> None:
        while (item := self._outbox.get()) is not None:
            self._deliver(*item)

    def _deliver(self, events: list[dict], trial_ids: set[str]) -> None:
        if time.monotonic() < self._retry_at:
            self._behind = True  # what is held back now goes with the replay
            return
        try:
            with quick_mlflow_http():
                if self._tracker is None:
                    self._tracker = Tracker(self.tracking_uri, self.experiment_id)
                if self._behind:
                    n = replay(self.journal, self._tracker, trial_ids)
                    log.warning("MLflow answers again; replayed %d journal events", n)
                    self._behind = False
                else:
                    self._tracker.apply_events(events)
                    for event in events:
                        self._written(event)
        except Exception as e:  # MLflow down: the journal keeps it; a replay writes it later
            self.failures += 1
            self._tracker, self._behind = None, True
            self._retry_at = time.monotonic() + self.retry_after_s
            if self.failures == 1 or self.failures % 50 == 0:
                log.warning("MLflow unreachable (%s); events are kept in %s", first_line(e, 200),
                            self.journal)

    def _written(self, event: dict) -> None:
        """Bookkeeping of what reached MLflow: a trial whose start and end did (results go in
        order between them), and that no earlier driver journalled (a killed one may not have
        sent all it journalled), is one the final sync need not replay."""
        if event["op"] == "start" and event["trial_id"] not in (self._earlier or ()):
            self._started.add(event["trial_id"])
        elif event["op"] == "end" and event["trial_id"] in self._started:
            self._delivered.add(event["trial_id"])

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        cfg = train_config(trial.config)
        cell = trial.config.get("cell") or cell_id(cfg.method, cfg.missing)
        tags = {"method": cfg.method, "proportion": cfg.missing, "cell": cell, "seed": cfg.seed,
                "phase": self.phase, "trial_id": trial.trial_id}
        if trial.config.get("optuna_trial") is not None:
            tags["optuna_trial"] = trial.config["optuna_trial"]
        name = self.name_prefix + run_name(cell, {"phase": self.phase, **trial.config})
        self._emit({"op": "start", "trial_id": trial.trial_id, "name": name, "tags": tags,
                    "params": run_params(trial.config), "dataset": self.dataset}, trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(REPLAYED):  # a result the journal already has, told Tune again on resume
            return
        # One event per epoch, those the report carries first (tagtune.launch.trainable.EARLIER).
        for r in [*result.get(EARLIER, ()), result]:
            self._emit({"op": "result", "trial_id": trial.trial_id, "step": r["training_iteration"],
                        "metrics": numeric_metrics(r)}, trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._emit({"op": "end", "trial_id": trial.trial_id, "status": "FINISHED"}, trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._emit({"op": "end", "trial_id": trial.trial_id, "status": "FAILED"}, trials)


def cell_summaries(cells: list[str], best: dict[str, dict], replicates: list[dict] | None,
                   dataset: dict | None = None) -> list[dict]:
    """Journal events putting each cell's result on its parent run: after the search (``replicates``
    None) the best config and its validation score; after the replicates also their test metrics'
    mean and sd, and the parent ends (FINISHED)."""
    import numpy as np

    events = []
    for cell in cells:
        event: dict[str, Any] = {"op": "cell", "cell": cell, "dataset": dataset, "metrics": {},
                                 "params": {}, "tags": {}}
        b = best.get(cell)
        if b is not None:
            event["params"] = run_params({k: v for k, v in b["config"].items() if k != "phase"})
            event["metrics"][b.get("metric", "val/best_loss")] = float(b["value"])
            number = b["config"].get("optuna_trial")
            event["tags"]["best_trial"] = (run_name(cell, b["config"]) if number is not None
                                           else b["trial_id"])
        if replicates is not None:
            rows = [r for r in replicates if r["cell"] == cell and r.get("error") is None]
            keys = sorted({k for r in rows for k, v in r.items() if k.startswith("test")
                           and isinstance(v, int | float) and math.isfinite(v)})
            for k in keys:
                values = np.array([r[k] for r in rows if k in r], dtype=float)
                event["metrics"][k] = float(values.mean())
                if len(values) > 1:
                    event["metrics"][f"{k}_sd"] = float(values.std(ddof=1))
            event["metrics"]["replicates"] = float(len(rows))
            event["status"] = "FINISHED"
        events.append(event)
    return events


def record_cells(study_dir: Path, tracking_uri: str, experiment_id: str, events: list[dict]) -> None:
    """Journal the cells' summaries, then write them to MLflow if it answers (else the final sync
    or ``tagtune mlflow sync`` does)."""
    _journal_then_send(study_dir, tracking_uri, experiment_id, events, "cell summaries")


def tag_trials(study_dir: Path, tracking_uri: str, experiment_id: str, trial_ids: list[str],
               tags: dict[str, str]) -> None:
    """Journal tags for the runs of ``trial_ids``, then set them in MLflow if it answers (else the
    final sync or ``tagtune mlflow sync`` does)."""
    _journal_then_send(study_dir, tracking_uri, experiment_id,
                       [{"op": "tag", "trial_id": tid, "tags": tags} for tid in trial_ids], "tags")


def _journal_then_send(study_dir: Path, tracking_uri: str, experiment_id: str, events: list[dict],
                       what: str) -> None:
    # The journal first: whatever MLflow does next, a sync can replay them.
    for event in events:
        append(Path(study_dir) / JOURNAL, event)
    try:
        with quick_mlflow_http():
            Tracker(tracking_uri, experiment_id).apply_events(events)
    except Exception as e:  # noqa: BLE001 -- MLflow down: the journal keeps them
        log.warning("MLflow unreachable (%s); %s kept in %s", first_line(e, 200), what,
                    Path(study_dir) / JOURNAL)


def sync(study_dir: str | Path, tracking_uri: str, experiment_id: str, trial_ids: set[str],
         delivered: set[str] = frozenset()) -> int:
    """Make the MLflow experiment hold exactly the study's trials; returns events replayed.

    ``trial_ids`` are the trials the study's Tune experiments know. A driver killed between
    two experiment checkpoints can leave runs of trials that Tune never recorded (the resumed
    study hands their budget out again, under new ids): those runs are deleted, so that no
    trial counts twice, and so is any second run of one trial (the oldest is kept). Then the
    journal is replayed for the known trials (and the cells' summaries). A cell's parent run
    created twice the same way is kept once (the oldest); the replay points every child to it.
    """
    tracker = Tracker(tracking_uri, experiment_id)
    client = tracker.client
    for tag, known in ((TRIAL_TAG, trial_ids), (CELL_TAG, None)):
        kept: set[str] = set()
        for run_id, key in tracker.tagged(tag):
            # A second run of one trial or cell: a create_run whose answer was lost, then a retry.
            if (known is not None and key not in known) or key in kept:
                client.delete_run(run_id)
            kept.add(key)
    return replay(Path(study_dir) / JOURNAL, tracker, trial_ids, delivered)


def read_journal(journal: Path) -> list[dict]:
    """The journal's events in order; a line cut by a crash mid-write is left out."""
    events = []
    for line in journal.read_text().splitlines() if journal.exists() else []:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def journal_outcomes(journal: Path) -> dict[str, tuple[str, dict[str, float]]]:
    """trial_id -> (status of its last end event, its last reported metrics), for every trial
    the journal saw end; the metrics as they were reported (so a resume can report them again)."""
    last: dict[str, dict[str, float]] = {}
    out: dict[str, tuple[str, dict[str, float]]] = {}
    for event in read_journal(journal):
        tid = event.get("trial_id")
        if event.get("op") == "start":
            out.pop(tid, None)  # run again after that end: what counts is how this run ends
        elif event.get("op") == "result":
            last[tid] = event["metrics"]
        elif event.get("op") == "end":
            out[tid] = (event["status"], last.get(tid, {}))
    return out


def replay(journal: Path, tracker: Tracker, trial_ids: set[str], delivered: set[str] = frozenset()) -> int:
    """Apply the journal's events of ``trial_ids`` in order (idempotent); returns their number.
    ``delivered``: trials whose start, results and end MLflow is known to hold (only their tags
    are applied again)."""
    todo = [event for event in read_journal(journal)
            if event.get("op") == "cell" or event.get("trial_id") in trial_ids and not (
                event["trial_id"] in delivered and event.get("op") in ("start", "result", "end"))]
    for i in range(0, len(todo), REPLAY_EVENTS):
        tracker.apply_events(todo[i:i + REPLAY_EVENTS])
    return len(todo)


def mlflow_experiment(tracking_uri: str, name: str, study_dir: Path) -> str:
    """Create (or find) the study's experiment, its artifacts at an absolute path."""
    import mlflow
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    try:
        create_sqlite_store(tracking_uri, study_dir)
        client = MlflowClient(tracking_uri)  # an unsupported URI fails here already
        with quick_mlflow_http():
            exp = client.get_experiment_by_name(name)
            if exp is None:
                experiment_id = client.create_experiment(
                    name, artifact_location=(study_dir / ARTIFACTS).as_uri())
            else:
                experiment_id = exp.experiment_id
            if exp is None or exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
            return experiment_id
    except (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError) as e:
        raise ConfigError("mlflow_uri", f"MLflow store not usable ({first_line(e)})",
                          where=tracking_uri) from None


def create_sqlite_store(tracking_uri: str, study_dir: Path) -> None:
    """Make a new SQLite store whole before anyone uses it. MLflow builds its tables in a few
    dozen schema migrations; a study killed between two leaves a store that MLflow can never
    open again ("table _alembic_tmp_experiment_tags already exists"). So the store is made on a
    temporary file, renamed into place once whole. Made as a copy of an empty migrated store
    (:func:`empty_store_template`): replaying every migration took ~1.5 s of each study's start."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    if path.exists() or not path.is_absolute():
        return
    root = (Path(study_dir) / ARTIFACTS).as_uri()
    template = empty_store_template()
    with atomic.atomic_path(path) as tmp:
        if template is None:
            _migrated_store(tmp, root)
        else:
            shutil.copyfile(template, tmp)
            _adopt_store(tmp, root)


def empty_store_template() -> Path | None:
    """An MLflow SQLite store with every migration applied and nothing else in it (MLflow's
    Default experiment, its default workspace), made once per MLflow version in the user's cache
    (``$XDG_CACHE_HOME/tagtune``, else ``~/.cache/tagtune``) and renamed into place whole; None
    where that cannot be written (each store then migrates itself, as MLflow does)."""
    from importlib.metadata import version

    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tagtune"
        path = cache / f"mlflow-{version('mlflow')}-empty.db"
        if not path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(path) as tmp:
                _migrated_store(tmp, (cache / ARTIFACTS).as_uri())
    except (OSError, RuntimeError):  # RuntimeError: no home directory to be found
        return None
    return path


def _migrated_store(path: Path, artifact_root: str) -> None:
    """A new store at ``path`` as MLflow makes one: its tables, every migration, the Default
    experiment (its artifacts under ``artifact_root``)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(f"sqlite:///{path}", artifact_root).engine.dispose()


def _adopt_store(path: Path, artifact_root: str) -> None:
    """A copy of the template made this study's own: its Default experiment (the one row in it
    that depends on where and when the store was made) as a store made here and now has it."""
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    experiment = SqlAlchemyStore.DEFAULT_EXPERIMENT_ID
    location = append_to_uri_path(resolve_uri_if_local(artifact_root), experiment)  # as MLflow's
    now = int(time.time() * 1000)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                   "last_update_time = ? WHERE experiment_id = ?", (location, now, now, int(experiment)))


def final_sync(study_dir: Path, tracking_uri: str, experiment_id: str, trial_ids: set[str]) -> bool:
    """``sync`` at the end of a study; False if MLflow does not answer.

    MLflow still down at the end does not fail a finished study: the journal keeps every
    event, and ``tagtune mlflow sync STUDY_DIR`` replays it once the server is back.
    """
    try:
        with quick_mlflow_http():
            # Not again what this process's journal callbacks wrote whole (a replay of every
            # trial's events cost ~10 ms a trial, after the search, in the study's wall time).
            sync(study_dir, tracking_uri, experiment_id, trial_ids,
                 _DELIVERED.get((tracking_uri, experiment_id), set()))
        return True
    except Exception as e:  # noqa: BLE001 -- any MLflow/network failure means "later"
        log.warning("MLflow unreachable at the end of the study (%s); run `tagtune mlflow sync %s` "
                    "when it is back", first_line(e), study_dir)
        return False
