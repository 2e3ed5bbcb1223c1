"""The MLflow callback during an outage: journal only, no retry storm, catch-up when back;
sync removes a trial's second run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from tagtune.launch import tracking
from tagtune.launch.tracking import TRIAL_TAG, MlflowJournalCallback, Tracker, sync
from tests.launch.processes import free_port


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
    n_calls = len(calls)
    cb.on_trial_start(0, [t1, t2], t2)
    cb.on_trial_result(0, [t1, t2], t2, _result(1))
    assert len(calls) == n_calls, "MLflow was called again within retry_after_s"
    down["now"], cb._retry_at = False, 0.0  # back, and the wait is over
    cb.on_trial_complete(0, [t1, t2], t1)  # replays the journal: everything lands

    client = MlflowClient(uri)
    runs = {r.data.tags[TRIAL_TAG]: r for r in client.search_runs([exp])}
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
    assert cb.failures == 1  # and not tried again for the second event
    sync(tmp_path, uri, exp, {"a"})
    runs = client.search_runs([exp])
    assert [r.info.run_id for r in runs] == [first_a]
    assert [m.step for m in client.get_metric_history(first_a, "epoch")] == [1]
    assert tracking.JOURNAL in {p.name for p in tmp_path.iterdir()}
