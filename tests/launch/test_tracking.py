"""The MLflow callback during an outage: journal only, no retry storm, catch-up when back;
sync removes a trial's second run."""

from __future__ import annotations

import time
from contextlib import closing
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from tagtune.launch import mlflow_bulk, tracking
from tagtune.launch.tracking import TRIAL_TAG, MlflowJournalCallback, Tracker, sync
from tests.launch.processes import free_port

TRIALS = f"tags.`{TRIAL_TAG}` != ''"  # the trials' runs, not the cells' parent runs


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri).create_experiment("x")


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"method": "b1", "lr": 0.01, "epochs": 3,
                                                 "cell": "b1@0.00", "phase": "search"})


def _result(step: int) -> dict:
    return {"training_iteration": step, "epoch": step, "val/loss": 1.0 / step}


def test_outage_is_journaled_then_caught_up(tmp_path, store, monkeypatch):
    uri, exp = store
    down, calls = {"now": False}, []
    real_apply = Tracker.apply

    def apply(self, event):
        calls.append(event["op"])
        if down["now"]:
            raise ConnectionError("server down")
        real_apply(self, event)

    monkeypatch.setattr(Tracker, "apply", apply)
    cb = MlflowJournalCallback(tmp_path, uri, exp, "search", retry_after_s=3600)
    t1, t2 = _trial("t1"), _trial("t2")
    cb.on_trial_start(0, [t1], t1)
    cb.on_trial_result(0, [t1], t1, _result(1))
    down["now"] = True
    cb.on_trial_result(0, [t1], t1, _result(2))  # fails: MLflow left alone from now on
    cb.drain()  # MLflow is written by the callback's thread: wait for it before counting
    n_calls = len(calls)
    cb.on_trial_start(0, [t1, t2], t2)
    cb.on_trial_result(0, [t1, t2], t2, _result(1))
    cb.drain()
    assert len(calls) == n_calls, "MLflow was called again within retry_after_s"
    down["now"], cb._retry_at = False, 0.0  # back, and the wait is over
    cb.on_trial_complete(0, [t1, t2], t1)  # replays the journal: everything lands
    cb.drain()

    client = MlflowClient(uri)
    runs = {r.data.tags[TRIAL_TAG]: r for r in client.search_runs([exp], TRIALS)}
    assert set(runs) == {"t1", "t2"}
    assert runs["t1"].info.status == "FINISHED" and runs["t2"].info.status == "RUNNING"
    for tid, steps in (("t1", [1, 2]), ("t2", [1])):
        history = client.get_metric_history(runs[tid].info.run_id, "val/loss")
        assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in steps]
    assert runs["t2"].data.params["lr"] == "0.01"


def test_sync_keeps_one_run_per_trial_and_drops_unknown_trials(tmp_path, store):
    uri, exp = store
    client = MlflowClient(uri)
    for tid in ("a", "a", "ghost"):  # "a" twice: a create whose answer was lost, then a retry
        client.create_run(exp, tags={TRIAL_TAG: tid})
    first_a = client.search_runs([exp], f"tags.`{TRIAL_TAG}` = 'a'",
                                 order_by=["attributes.start_time ASC"])[0].info.run_id
    cb = MlflowJournalCallback(tmp_path, f"http://127.0.0.1:{free_port()}", exp, "search")
    a = _trial("a")
    cb.on_trial_start(0, [a], a)  # nothing answers there: journal only
    cb.on_trial_result(0, [a], a, _result(1))
    cb.drain()
    assert cb.failures == 1  # and not tried again for the second event
    sync(tmp_path, uri, exp, {"a"})
    runs = client.search_runs([exp], TRIALS)
    assert [r.info.run_id for r in runs] == [first_a]
    assert len(client.search_runs([exp])) == 2  # and its cell's parent run
    assert [m.step for m in client.get_metric_history(first_a, "epoch")] == [1]
    assert tracking.JOURNAL in {p.name for p in tmp_path.iterdir()}


def _start(cb, tid: str, config: dict) -> None:
    t = SimpleNamespace(trial_id=tid, config=config)
    cb.on_trial_start(0, [t], t)


def test_runs_nest_under_their_cell_with_readable_names_own_params_and_the_dataset(tmp_path, store):
    uri, exp = store
    dataset = {"name": "tiny", "digest": "f1ngerpr1nt", "source": "/data/tiny.h5"}
    cb = MlflowJournalCallback(tmp_path, uri, exp, "search", dataset=dataset)
    _start(cb, "s7", {"method": "b0", "lr": 0.01, "cell": "b0@0.40", "missing": 0.4,
                      "phase": "search", "optuna_trial": 7})
    _start(cb, "s8", {"method": "le", "lr": 0.01, "gamma": 20.0, "cell": "le@0.40", "missing": 0.4,
                      "phase": "search", "optuna_trial": 3})
    cb.drain()  # the search phase ends before the replicates start (one callback's thread at a time)
    replicate = MlflowJournalCallback(tmp_path, uri, exp, "replicate", dataset=dataset)
    _start(replicate, "r2", {"method": "b0", "lr": 0.01, "cell": "b0@0.40", "missing": 0.4,
                             "phase": "replicate", "replicate": 2, "seed": 2, "optuna_trial": 7})
    replicate.drain()

    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert set(runs) == {"b0@0.40", "le@0.40", "b0@0.40 #7", "le@0.40 #3", "b0@0.40 seed 2"}
    parents = {name: runs[name].info.run_id for name in ("b0@0.40", "le@0.40")}
    for name in ("b0@0.40 #7", "b0@0.40 seed 2"):
        assert runs[name].data.tags[tracking.PARENT_TAG] == parents["b0@0.40"]
    assert runs["le@0.40 #3"].data.tags[tracking.PARENT_TAG] == parents["le@0.40"]
    b0, le = runs["b0@0.40 #7"].data.params, runs["le@0.40 #3"].data.params
    assert "gamma" not in b0 and "alpha" not in b0 and "beta" not in b0 and b0["lr"] == "0.01"
    assert le["gamma"] == "20.0" and "alpha" not in le and "model.hidden" in le
    inputs = client.get_run(runs["b0@0.40 #7"].info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("tiny", "f1ngerpr1nt")]
    assert "/data/tiny.h5" in inputs[0].dataset.source


def test_cell_summary_lands_on_the_parent_once(tmp_path, store):
    uri, exp = store
    best = {"mt@0.40": {"value": 0.5, "trial_id": "x", "config": {
        "method": "mt", "missing": 0.4, "cell": "mt@0.40", "phase": "search", "alpha": 0.99,
        "optuna_trial": 4}}}
    reps = [{"cell": "mt@0.40", "error": None, "test/f1_macro": v} for v in (0.4, 0.6)]
    tracking.record_cells(tmp_path, uri, exp, tracking.cell_summaries(["mt@0.40"], best, None))
    tracking.record_cells(tmp_path, uri, exp, tracking.cell_summaries(["mt@0.40"], best, reps))
    sync(tmp_path, uri, exp, set())  # replaying the same summaries changes nothing
    client = MlflowClient(uri)
    (parent,) = client.search_runs([exp])
    assert parent.info.run_name == "mt@0.40" and parent.info.status == "FINISHED"
    m = parent.data.metrics
    assert m["val/best_loss"] == 0.5 and m["test/f1_macro"] == pytest.approx(0.5)
    assert m["test/f1_macro_sd"] == pytest.approx(0.1414, abs=1e-4) and m["replicates"] == 2
    assert parent.data.params["alpha"] == "0.99" and "gamma" not in parent.data.params
    assert parent.data.tags["best_trial"] == "mt@0.40 #4"
    assert len(client.get_metric_history(parent.info.run_id, "test/f1_macro")) == 1


def test_sync_keeps_one_parent_per_cell_and_repoints_its_children(tmp_path, store):
    uri, exp = store
    cb = MlflowJournalCallback(tmp_path, uri, exp, "search")
    _start(cb, "a", {"method": "b1", "cell": "b1@0.00", "phase": "search", "optuna_trial": 0})
    cb.drain()
    client = MlflowClient(uri)
    (first,) = client.search_runs([exp], f"tags.`{tracking.CELL_TAG}` = 'b1@0.00'")
    second = client.create_run(exp, run_name="b1@0.00", tags={tracking.CELL_TAG: "b1@0.00"})
    (child,) = client.search_runs([exp], f"tags.`{TRIAL_TAG}` = 'a'")
    client.set_tag(child.info.run_id, tracking.PARENT_TAG, second.info.run_id)
    sync(tmp_path, uri, exp, {"a"})
    runs = client.search_runs([exp])
    assert sorted(r.info.run_name for r in runs) == ["b1@0.00", "b1@0.00 #0"]
    child = client.get_run(child.info.run_id)
    assert child.data.tags[tracking.PARENT_TAG] == first.info.run_id


def test_experiment_is_tagged_as_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.mlflow_experiment(uri, "kind", tmp_path)
    assert tracking.mlflow_experiment(uri, "kind", tmp_path) == exp
    tags = MlflowClient(uri).get_experiment(exp).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize("bulk", [True, False], ids=["one-transaction", "log_batch"])
def test_batched_events_reach_mlflow_once_each_in_few_calls_and_on_time(tmp_path, store, monkeypatch, bulk):
    uri, exp = store
    calls = []  # the metrics of each call that writes some, per run
    if bulk:  # SQLite: a batch's every run in one transaction (tagtune.launch.mlflow_bulk)
        real_bulk = mlflow_bulk.write

        def write(store, experiment_id, batch):
            if batch.metrics:
                calls.append(sorted(len(ms) for ms in batch.metrics.values()))
            return real_bulk(store, experiment_id, batch)

        monkeypatch.setattr(mlflow_bulk, "write", write)
    else:  # a store the bulk way does not take (a tracking server): a log_batch per run
        real = MlflowClient.log_batch

        def log_batch(self, run_id, metrics=(), **kw):
            if metrics:
                calls.append(len(metrics))
            return real(self, run_id, metrics=metrics, **kw)

        monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
        monkeypatch.setattr(mlflow_bulk, "sql_store", lambda client: None)
    clock = [1000.0]  # the callback's own clock: batch_s passes when the test says
    monkeypatch.setattr(tracking, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    cb = MlflowJournalCallback(tmp_path, uri, exp, "search", batch_events=100, batch_s=2.0)
    t1, t2 = _trial("t1"), _trial("t2")
    for t in (t1, t2):
        cb.on_trial_start(0, [t1, t2], t)
    for step in range(1, 6):
        for t in (t1, t2):
            cb.on_trial_result(0, [t1, t2], t, _result(step))
    cb.on_trial_result(0, [t1, t2], t1, _result(2))  # a step again (a restart): logged once
    cb.on_trial_complete(0, [t1, t2], t1)
    cb.on_step_end(0, [t1, t2])
    cb.drain()
    assert calls == [], "an event was sent before its batch was due"
    # Every event is in the journal already, written before MLflow hears of it.
    journal = tracking.read_journal(tmp_path / "mlflow-journal.jsonl")
    assert [e["op"] for e in journal].count("result") == 11 and journal[-1]["op"] == "end"
    clock[0] += 2.0  # the batch's time has come: Tune's next turn sends it, no trial reporting
    cb.on_step_end(0, [t1, t2])
    cb.drain()
    # 5 steps x (epoch, val/loss) a run, the repeat left out: one call, or one per run.
    assert calls == ([[10, 10]] if bulk else [10, 10])
    runs = {r.data.tags[TRIAL_TAG]: r for r in MlflowClient(uri).search_runs([exp], TRIALS)}
    assert runs["t1"].info.status == "FINISHED" and runs["t2"].info.status == "RUNNING"
    cb.on_trial_result(0, [t1, t2], t2, _result(6))
    cb.on_experiment_end([t1, t2])  # what is held at the end goes too
    client = MlflowClient(uri)
    for tid, steps in (("t1", 5), ("t2", 6)):
        history = client.get_metric_history(runs[tid].info.run_id, "val/loss")
        assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in range(1, steps + 1)]


def _schema(path) -> set[tuple]:
    """Every table, index and constraint of an SQLite store, and its schema revision. A
    statement's clauses as a set: MLflow's own migrations order a table's constraints
    differently from one run to the next."""
    import sqlite3

    def clauses(sql):
        return frozenset(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())

    with closing(sqlite3.connect(path)) as db:
        return ({(kind, name, clauses(sql)) for kind, name, sql
                 in db.execute("SELECT type, name, sql FROM sqlite_master")}
                | {("revision", *row) for row in db.execute("SELECT * FROM alembic_version")})


def test_a_new_store_is_a_copy_of_the_migrated_template_that_mlflow_opens_without_migrating(
        tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    mlflows_own = tmp_path / "own.db"
    MlflowClient(f"sqlite:///{mlflows_own}").search_experiments()  # a store MLflow migrated itself
    exp = tracking.mlflow_experiment(f"sqlite:///{first / 'mlflow.db'}", "a", first)  # makes the template
    template = tracking.empty_store_template()
    assert template is not None and template.parent == tmp_path / "cache" / "tagtune"
    assert _schema(template) == _schema(mlflows_own)

    def no_migrations(*_args, **_kwargs):
        raise AssertionError("a store made from the template must not migrate")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    monkeypatch.setattr(db_utils, "_upgrade_db", no_migrations)
    uri = f"sqlite:///{second / 'mlflow.db'}"
    assert tracking.mlflow_experiment(uri, "b", second) == exp  # each store its own experiment 1
    # The same tables, indexes and schema revision as a store MLflow migrated itself; its Default
    # experiment where a store made here would have it.
    assert _schema(second / "mlflow.db") == _schema(mlflows_own)
    client = MlflowClient(uri)
    assert client.get_experiment("0").artifact_location == (second / "mlartifacts" / "0").as_uri()
    assert client.get_experiment(exp).artifact_location == (second / "mlartifacts").as_uri()
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "epoch", 1.0, step=1)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch")] == [1.0]
    assert not list(second.glob(".mlflow.db.*"))  # no temporary file left beside it


def test_a_store_is_still_made_where_no_template_can_be_kept(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert tracking.empty_store_template() is None
    exp = tracking.mlflow_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "x", tmp_path)
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment(exp).name == "x"


def test_the_final_sync_replays_only_what_the_callbacks_did_not_write_whole(tmp_path, store,
                                                                             monkeypatch):
    """A trial whose start, results and end this process's callback wrote is not replayed at
    the end (its tags still are); one it did not (a trial still running, here) is."""
    uri, exp = store
    monkeypatch.setattr(tracking, "_DELIVERED", {})
    cb = MlflowJournalCallback(tmp_path, uri, exp, "search")
    done, running = _trial("done"), _trial("running")
    for t in (done, running):
        cb.on_trial_start(0, [done, running], t)
        cb.on_trial_result(0, [done, running], t, _result(1))
    cb.on_trial_complete(0, [done, running], done)
    cb.drain()
    tracking.tag_trials(tmp_path, uri, exp, ["done"], {"best": "yes"})
    applied: list[tuple[str, str]] = []
    real_apply = Tracker.apply_events
    monkeypatch.setattr(Tracker, "apply_events", lambda self, es: (
        applied.extend((e["trial_id"], e["op"]) for e in es), real_apply(self, es)))
    assert tracking.final_sync(tmp_path, uri, exp, {"done", "running"})
    assert applied == [("running", "start"), ("running", "result"), ("done", "tag")]
    runs = {r.data.tags[TRIAL_TAG]: r for r in MlflowClient(uri).search_runs([exp], TRIALS)}
    assert runs["done"].info.status == "FINISHED" and runs["done"].data.tags["best"] == "yes"

    # A trial a killed driver journalled (and may not have sent): replayed whole, though this
    # driver's callback wrote its start (again), its later results and its end.
    monkeypatch.setattr(tracking, "_DELIVERED", {})
    killed = _trial("killed")
    tracking.append(tmp_path / tracking.JOURNAL, {"op": "start", "trial_id": "killed", "name": "k",
                                                  "tags": {"cell": "b1@0.00"}, "params": {}})
    tracking.append(tmp_path / tracking.JOURNAL, {"op": "result", "trial_id": "killed", "step": 1,
                                                  "metrics": {"epoch": 1.0, "val/loss": 1.0}})
    cb = MlflowJournalCallback(tmp_path, uri, exp, "search")
    cb.on_trial_start(0, [killed], killed)
    cb.on_trial_result(0, [killed], killed, _result(2))
    cb.on_trial_complete(0, [killed], killed)
    cb.drain()
    applied.clear()
    assert tracking.final_sync(tmp_path, uri, exp, {"done", "running", "killed"})
    assert ("killed", "result") in applied
    run = [r for r in MlflowClient(uri).search_runs([exp], TRIALS) if r.data.tags[TRIAL_TAG] == "killed"]
    assert sorted(m.step for m in MlflowClient(uri).get_metric_history(run[0].info.run_id, "epoch")) == [1, 2]

    # A sender that failed once vouches for nothing: everything is replayed.
    applied.clear()
    monkeypatch.setattr(tracking, "_DELIVERED", {})
    cb = MlflowJournalCallback(tmp_path, uri, exp, "search")
    cb.failures = 1
    cb._delivered = {"done"}
    cb.drain()
    assert tracking.final_sync(tmp_path, uri, exp, {"done", "running"})
    assert ("done", "start") in applied and ("done", "end") in applied
