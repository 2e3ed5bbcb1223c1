"""A batch of trials' runs -- their creation, params, dataset, epoch metrics and end -- in one
transaction of MLflow's own SQL store.

Why: a study's driver writes every trial to MLflow, on the same cores the trials train on.
Through ``MlflowClient`` a trial of 20 epochs x 11 metrics costs its driver ~45 ms of CPU (a run
created, 24 params, the dataset input, ~220 metric rows at ~0.1 ms each in SQLAlchemy's ORM, the
run ended: six transactions), about half of what the driver spends on a trial (bench/RESULTS.md).
Here a batch of such writes, for any number of runs, is one transaction of multi-row INSERTs
through MLflow's own table models (``tagtune.launch.tracking`` makes the batches), and it leaves
the store as the client's calls would:

- a run: ``create_run``'s row (artifact URI under the experiment's, user from ``mlflow.user`` or
  "unknown") and tags (``mlflow.runName`` added), in an active experiment;
- its params; its dataset input (the experiment's dataset row reused, else made) with its tags;
- metric rows (a row already there is not written twice) and ``latest_metrics`` as MLflow leaves
  it: per key the greatest (step, timestamp, value), NaN and infinities stored as MLflow does;
- its end: status and end time, as ``set_terminated``;
- a run's start and end times are the caller's (a study's: when the journal had the trial's start
  and end), not when the batch was written;
- a run that is not there or not active is refused with MLflow's own error, and nothing is written.

Only for a store MLflow opened as SQL on SQLite or Postgres; a tracking server over HTTP or another
database goes through the client. ``tests/launch/test_mlflow_bulk.py`` checks that both ways leave
the same runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

DIALECTS = ("sqlite", "postgresql")
RUNS = 200  # runs read back in one IN (...): a bound on a statement's parameters
RUN_NAME, USER = "mlflow.runName", "mlflow.user"


@dataclass
class NewRun:
    run_id: str
    name: str
    tags: dict[str, str]
    params: dict[str, str]
    start_time: int  # ms, as MLflow keeps it
    # The run's mlflow.data input: {name, digest, source_type, source, tags: {name: value}}.
    dataset: dict[str, Any] | None = None


@dataclass
class Batch:
    """Writes in the order they were asked for; :func:`write` keeps each run's order (created,
    then its metrics, then its end)."""

    new: list[NewRun] = field(default_factory=list)
    metrics: dict[str, list] = field(default_factory=dict)  # run id -> mlflow.entities.Metric list
    ends: dict[str, tuple[str, int]] = field(default_factory=dict)  # run id -> (status, end time ms)

    def __bool__(self) -> bool:
        return bool(self.new or self.metrics or self.ends)


def sql_store(client: Any) -> Any | None:
    """The client's SQLAlchemy store where the bulk write applies to it, else None."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
    except (ImportError, AttributeError):  # another MLflow: the public API does it all
        return None
    if not isinstance(store, SqlAlchemyStore) or store.engine.dialect.name not in DIALECTS:
        return None
    return store


def new_run_id() -> str:
    return uuid.uuid4().hex  # as MLflow's create_run makes them


def write(store: Any, experiment_id: str, batch: Batch) -> None:
    """Everything in ``batch``, in one transaction."""
    from mlflow.entities import LifecycleStage, RunStatus, SourceType
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
    from mlflow.store.tracking.dbmodels.models import (
        SqlDataset,
        SqlExperiment,
        SqlInput,
        SqlInputTag,
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    from mlflow.utils.uri import append_to_uri_path
    from sqlalchemy import insert, update

    if not batch:
        return
    if store.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as insert_new
    else:
        from sqlalchemy.dialects.sqlite import insert as insert_new
    metric_rows, latest = _metric_rows(store, batch.metrics)
    made = {r.run_id for r in batch.new}
    with store.ManagedSessionMaker(read_only=False) as session:
        if batch.new:
            exp = (session.query(SqlExperiment)
                   .filter(SqlExperiment.experiment_id == int(experiment_id)).one_or_none())
            if exp is None or exp.lifecycle_stage != LifecycleStage.ACTIVE:
                raise MlflowException(f"The experiment {experiment_id} must be in the 'active' state.",
                                      INVALID_PARAMETER_VALUE)
            runs, tags, params = [], [], []
            for r in batch.new:
                runs.append({
                    "run_uuid": r.run_id, "name": r.name, "experiment_id": int(experiment_id),
                    "artifact_uri": append_to_uri_path(exp.artifact_location, r.run_id,
                                                       store.ARTIFACTS_FOLDER_NAME),
                    "source_type": SourceType.to_string(SourceType.UNKNOWN), "source_name": "",
                    "entry_point_name": "", "user_id": r.tags.get(USER, "unknown"),
                    "status": RunStatus.to_string(RunStatus.RUNNING), "start_time": r.start_time,
                    "end_time": None, "deleted_time": None, "source_version": "",
                    "lifecycle_stage": LifecycleStage.ACTIVE})
                tags += [{"run_uuid": r.run_id, "key": k, "value": v}
                         for k, v in {RUN_NAME: r.name, **r.tags}.items()]
                params += [{"run_uuid": r.run_id, "key": k, "value": v} for k, v in r.params.items()]
            session.execute(insert(SqlRun.__table__), runs)
            session.execute(insert(SqlTag.__table__), tags)
            if params:
                session.execute(insert(SqlParam.__table__), params)
            _inputs(session, int(experiment_id), [r for r in batch.new if r.dataset],
                    (SqlDataset, SqlInput, SqlInputTag))
        older = [run_id for run_id in {*batch.metrics, *batch.ends} if run_id not in made]
        for i in range(0, len(older), RUNS):
            chunk = older[i:i + RUNS]
            found = dict(session.query(SqlRun.run_uuid, SqlRun.lifecycle_stage)
                         .filter(SqlRun.run_uuid.in_(chunk)).all())
            for run_id in chunk:
                if run_id not in found:
                    raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
                if found[run_id] != LifecycleStage.ACTIVE:
                    raise MlflowException(f"The run {run_id} must be in the 'active' state. Current "
                                          f"state is {found[run_id]}.", INVALID_PARAMETER_VALUE)
        if metric_rows:
            session.execute(insert_new(SqlMetric.__table__).on_conflict_do_nothing(), metric_rows)
            _latest(session, SqlLatestMetric, latest, made)
        if batch.ends:
            session.execute(update(SqlRun), [{"run_uuid": run_id, "status": status, "end_time": end}
                                             for run_id, (status, end) in batch.ends.items()])


def _metric_rows(store: Any, metrics: dict[str, list]) -> tuple[list[dict], dict]:
    """The metrics table's rows (a batch's repeats once) and, per (run, key), the batch's latest."""
    rows: dict[tuple, dict] = {}
    latest: dict[tuple[str, str], dict] = {}
    for run_id, ms in metrics.items():
        for m in ms:
            is_nan, value = store.sanitize_metric_value(float(m.value))
            row = {"run_uuid": run_id, "key": m.key, "value": value, "timestamp": int(m.timestamp),
                   "step": int(m.step), "is_nan": is_nan}
            rows[run_id, m.key, row["timestamp"], row["step"], value, is_nan] = row
            have = latest.get((run_id, m.key))
            if have is None or _order(row) > _order(have):
                latest[run_id, m.key] = row
    return list(rows.values()), latest


def _latest(session: Any, SqlLatestMetric: Any, latest: dict, made: set[str]) -> None:
    """``latest_metrics`` brought up to the batch: a key's row made, or replaced by a later one."""
    from sqlalchemy import insert, update

    runs = sorted({run_id for run_id, _ in latest if run_id not in made})  # new runs have none yet
    stored = {}
    for i in range(0, len(runs), RUNS):  # read with a lock, as MLflow reads them (Postgres)
        stored |= {(r.run_uuid, r.key): (r.step, r.timestamp, r.value) for r in session.query(
            SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.step,
            SqlLatestMetric.timestamp, SqlLatestMetric.value)
            .filter(SqlLatestMetric.run_uuid.in_(runs[i:i + RUNS]))
            .order_by(SqlLatestMetric.run_uuid, SqlLatestMetric.key).with_for_update()}
    new = [row for k, row in latest.items() if k not in stored]
    changed = [row for k, row in latest.items() if k in stored and _order(row) > stored[k]]
    if new:
        session.execute(insert(SqlLatestMetric.__table__), new)
    if changed:
        session.execute(update(SqlLatestMetric), changed)  # by primary key (run_uuid, key)


def _inputs(session: Any, experiment_id: int, runs: list[NewRun], models: tuple) -> None:
    """Each run's dataset as its input (``log_inputs``): the experiment's dataset row of that name
    and digest, made if missing; an input edge to the run; its context tag."""
    from sqlalchemy import insert

    SqlDataset, SqlInput, SqlInputTag = models
    if not runs:
        return
    uuids = {}
    for r in runs:
        key = (r.dataset["name"], r.dataset["digest"])
        if key in uuids:
            continue
        found = (session.query(SqlDataset.dataset_uuid)
                 .filter(SqlDataset.experiment_id == experiment_id, SqlDataset.name == key[0],
                         SqlDataset.digest == key[1]).first())
        if found is None:
            uuids[key] = uuid.uuid4().hex
            session.execute(insert(SqlDataset.__table__), [{
                "dataset_uuid": uuids[key], "experiment_id": experiment_id, "name": key[0],
                "digest": key[1], "dataset_source_type": r.dataset["source_type"],
                "dataset_source": r.dataset["source"], "dataset_schema": None, "dataset_profile": None}])
        else:
            uuids[key] = found[0]
    edges, tags = [], []
    for r in runs:
        edge = uuid.uuid4().hex
        edges.append({"input_uuid": edge, "source_type": "DATASET",
                      "source_id": uuids[r.dataset["name"], r.dataset["digest"]],
                      "destination_type": "RUN", "destination_id": r.run_id})
        tags += [{"input_uuid": edge, "name": k, "value": v} for k, v in r.dataset["tags"].items()]
    session.execute(insert(SqlInput.__table__), edges)
    if tags:
        session.execute(insert(SqlInputTag.__table__), tags)


def _order(row: dict) -> tuple:
    return row["step"], row["timestamp"], row["value"]


def tagged_runs(store: Any, experiment_id: str, key: str) -> list[tuple[str, str]]:
    """(run id, value of the tag ``key``) of the experiment's active runs that carry it, not empty,
    oldest first: what ``search_runs(filter "tags.`key` != ''", order_by start time ascending)``
    finds, in its order (start time, a run without one last, then run id), read from the runs' and
    tags' tables alone (``search_runs`` loads every run whole -- params, tags, latest metrics --
    through the ORM: 1.6 s for 1,000 runs, both trial slots idle after a search)."""
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    from sqlalchemy import case

    with store.ManagedSessionMaker() as session:
        return [(run_id, value) for run_id, value in session.query(SqlRun.run_uuid, SqlTag.value)
                .join(SqlTag, SqlTag.run_uuid == SqlRun.run_uuid)
                .filter(SqlRun.experiment_id == int(experiment_id),
                        SqlRun.lifecycle_stage == LifecycleStage.ACTIVE,
                        SqlTag.key == key, SqlTag.value != "")
                .order_by(case((SqlRun.start_time.is_(None), 1), else_=0), SqlRun.start_time,
                          SqlRun.run_uuid)]
