"""A batch of trials written in one transaction (tagtune.launch.mlflow_bulk) leaves MLflow as the
client's own calls leave it: the same runs, tags, params, dataset inputs, metric histories,
latest values, statuses and times, and the same refusals. On SQLite, and on a real Postgres
(the `long` tier; CI has one)."""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tagtune.launch import mlflow_bulk
from tagtune.launch.preflight import psycopg_uri
from tagtune.launch.tracking import TRIAL_TAG, Tracker

DATASET = {"name": "openmic.h5", "digest": "0123abcd", "source": "/data/openmic.h5"}


def _start(tid: str, ts: int) -> dict:
    return {"op": "start", "trial_id": tid, "ts": ts, "name": f"b1@0.00 #{tid}",
            "tags": {"method": "b1", "proportion": 0.0, "cell": "b1@0.00", "phase": "search"},
            "params": {"lr": 0.01, "model.layers": 1, "note": "x" * 7000}, "dataset": DATASET}


def _result(tid: str, step: int, ts: int, **metrics) -> dict:
    return {"op": "result", "trial_id": tid, "step": step, "ts": ts, "metrics": {"epoch": step, **metrics}}


# Journal events as a study's sender gets them, in batches, with what it must survive: several
# runs a batch, a step sent twice (a restart) and again in a later batch (a replay), steps out
# of order, a step older than what the run has, NaN and infinities, a run started, fed and
# ended in one batch, a resumed trial's run, a tag on a finished run.
BATCHES = [
    [_start("t1", 1000), _start("t2", 1001),
     *[_result("t1", s, 1100 + s, loss=1 / s) for s in (1, 2, 3)],
     _result("t2", 2, 1102, loss=0.5), _result("t2", 1, 1101, loss=0.9),
     _result("t1", 2, 1150, loss=7.0),  # step 2 again: logged once, the first time
     {"op": "end", "trial_id": "t1", "ts": 1200, "status": "FINISHED"}],
    [_result("t2", 3, 1300, loss=float("nan")), _result("t2", 3, 1300, loss=1.0),
     _start("t3", 1301), _result("t3", 1, 1302, loss=float("inf"), acc=-float("inf")),
     {"op": "end", "trial_id": "t3", "ts": 1303, "status": "FAILED"}],
    [_result("t1", 3, 1400, loss=0.1),  # a replay's step: the run has it
     _result("t2", 4, 1401, loss=0.2), {"op": "end", "trial_id": "t2", "ts": 1402, "status": "FINISHED"},
     {"op": "tag", "trial_id": "t1", "ts": 1403, "tags": {"tagtune.superseded": "yes"}},
     {"op": "cell", "cell": "b1@0.00", "ts": 1404, "params": {"lr": 0.01}, "metrics": {"val/map": 0.5}}],
]


def _runs(client: MlflowClient, exp: str) -> dict:
    """Every trial's run as MLflow shows it, by trial id; ids and what holds them as names."""
    def num(v):
        return "nan" if math.isnan(v) else v

    parents = {r.info.run_id: r.info.run_name for r in client.search_runs([exp])}
    out = {}
    for run in client.search_runs([exp], f"tags.`{TRIAL_TAG}` != ''"):
        run_id, info = run.info.run_id, run.info
        tags = dict(run.data.tags)
        tags["mlflow.parentRunId"] = parents[tags["mlflow.parentRunId"]]
        out[tags[TRIAL_TAG]] = {
            "info": (info.run_name, info.status, info.start_time, info.end_time, info.user_id,
                     info.lifecycle_stage, info.artifact_uri.endswith(f"/{run_id}/artifacts")),
            "tags": tags, "params": run.data.params,
            "inputs": [(d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
                        sorted((t.key, t.value) for t in d.tags)) for d in run.inputs.dataset_inputs],
            "latest": {k: num(v) for k, v in run.data.metrics.items()},
            "history": {k: sorted([(m.step, m.timestamp, num(m.value))
                                   for m in client.get_metric_history(run_id, k)], key=str)
                        for k in run.data.metrics},
        }
    return out


def _same_as_the_client(uri: str) -> None:
    client = MlflowClient(uri)
    seen = {}
    for bulk in (True, False):
        exp = client.create_experiment(f"bulk={bulk}")
        # A trial whose run an earlier driver made: its start and end go through the client.
        old = client.create_run(exp, run_name="b1@0.00 #t0", start_time=900,
                                tags={TRIAL_TAG: "t0"}).info.run_id
        client.log_batch(old, metrics=[Metric("epoch", 1, 900, 1)])
        tracker = Tracker(uri, exp, bulk=bulk)
        assert (tracker._store is not None) == bulk
        for batch in [[_start("t0", 901), _result("t0", 1, 902), _result("t0", 2, 903, loss=0.3),
                       {"op": "end", "trial_id": "t0", "ts": 904, "status": "FINISHED"}], *BATCHES]:
            tracker.apply_events(batch)
        seen[bulk] = _runs(client, exp)
        (cell,) = client.search_runs([exp], "tags.`tagtune.cell_run` = 'b1@0.00'")
        assert cell.data.metrics == {"val/map": 0.5} and cell.data.params == {"lr": "0.01"}
    assert seen[True] == seen[False]
    # What the batches say, not only that both ways agree.
    runs = seen[True]
    assert runs["t1"]["info"][1:4] == ("FINISHED", 1000, 1200)  # the journal's times, not the write's
    assert runs["t3"]["info"][1] == "FAILED" and runs["t2"]["latest"] == {"epoch": 4, "loss": 0.2}
    assert runs["t1"]["history"]["loss"] == [(1, 1101, 1.0), (2, 1102, 0.5), (3, 1103, 1 / 3)]
    assert runs["t2"]["history"]["loss"][2:] == [(3, 1300, "nan"), (4, 1401, 0.2)]
    assert runs["t0"]["history"]["loss"] == [(2, 903, 0.3)] and runs["t0"]["info"][1] == "FINISHED"
    assert len(runs["t1"]["params"]["note"]) == 6000 and runs["t1"]["tags"]["tagtune.superseded"] == "yes"
    assert runs["t1"]["inputs"] == [("openmic.h5", "0123abcd", "local", '{"uri": "/data/openmic.h5"}',
                                     [("mlflow.data.context", "train")])]


def test_a_batch_in_one_transaction_leaves_sqlite_as_the_client_does(tmp_path):
    _same_as_the_client(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.long
def test_a_batch_in_one_transaction_leaves_postgres_as_the_client_does(postgres):
    _same_as_the_client(psycopg_uri(postgres.uri.replace("tagtune@", f"tagtune:{postgres.password}@")))


def test_a_batch_naming_a_deleted_or_unknown_run_is_refused_as_mlflow_does_and_writes_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("x")
    live, gone = (client.create_run(exp).info.run_id for _ in range(2))
    client.delete_run(gone)
    store = mlflow_bulk.sql_store(client)
    for bad, words in ((gone, "must be in the 'active' state"), ("0" * 32, "not found")):
        with pytest.raises(MlflowException, match=words):
            client.log_batch(bad, metrics=[Metric("loss", 1.0, 1, 1)])
        new = mlflow_bulk.NewRun(mlflow_bulk.new_run_id(), "new", {}, {"lr": "0.1"}, start_time=1)
        metrics = {run: [Metric("loss", 1.0, 1, 1)] for run in (live, bad)}
        batch = mlflow_bulk.Batch(new=[new], metrics=metrics)
        with pytest.raises(MlflowException, match=words):
            mlflow_bulk.write(store, exp, batch)
        batch = mlflow_bulk.Batch(ends={bad: ("FINISHED", 2)})
        with pytest.raises(MlflowException, match=words):
            mlflow_bulk.write(store, exp, batch)
    # One transaction: neither the live run's metric nor the new run was written.
    assert client.get_metric_history(live, "loss") == []
    assert {r.info.run_name for r in client.search_runs([exp])} == {client.get_run(live).info.run_name}


def test_only_a_sql_store_on_sqlite_or_postgres_takes_the_bulk_way(tmp_path):
    assert mlflow_bulk.sql_store(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")) is not None
    assert mlflow_bulk.sql_store(MlflowClient("http://127.0.0.1:1")) is None


def test_tagged_runs_finds_what_search_runs_finds_in_its_order(tmp_path):
    # The final sync's and a resumed tracker's question, "which runs carry this tag, oldest first",
    # read from two tables: the same answer as search_runs over runs loaded whole.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp, other = client.create_experiment("x"), client.create_experiment("y")
    made = []
    for start, value in [(5, "a"), (3, "b"), (5, "c"), (3, "b"), (9, ""), (1, "d")]:
        run = client.create_run(exp, start_time=start, tags={TRIAL_TAG: value})  # "": not found
        made.append(run.info.run_id)
    client.create_run(exp, start_time=0, tags={"other": "e"})  # another tag: not found
    client.create_run(other, start_time=0, tags={TRIAL_TAG: "f"})  # another experiment
    client.delete_run(made[5])  # deleted: not found, as search_runs (active runs) does not
    expected = [(r.info.run_id, r.data.tags[TRIAL_TAG]) for r in client.search_runs(
        [exp], f"tags.`{TRIAL_TAG}` != ''", order_by=["attributes.start_time ASC"])]
    found = mlflow_bulk.tagged_runs(mlflow_bulk.sql_store(client), exp, TRIAL_TAG)
    assert found == expected
    assert sorted(v for _, v in found) == ["a", "b", "b", "c"]  # the ties (b, b; a, c) by run id
    assert Tracker(client._tracking_client.tracking_uri, exp, bulk=False).tagged(TRIAL_TAG) == found
