"""Reliability with real processes: a worker node killed, MLflow down. Nothing lost, nothing twice.

Each test starts its own processes (``tests/launch/processes.py``) and kills exactly
those, in a ``finally``, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tagtune.launch.tracking import (
    CELL_TAG,
    PARENT_TAG,
    TRIAL_TAG,
    numeric_metrics,
    read_journal,
)
from tagtune.launch.trainable import EARLIER
from tagtune.study import data
from tagtune.study.config import applies, to_dict
from tagtune.study.data import Dataset
from tagtune.study.folder import JOURNAL, train_config
from tests.conftest import make_split
from tests.launch.processes import (
    MlflowServer,
    RayCluster,
    base_env,
    kill_session,
    read_results,
)

# Bounded: a hung cluster fails the test (cleanup still runs) instead of stalling CI.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]
EVERY = 2  # checkpoint every 2 epochs
TRIAL_RUNS = f"tags.`{TRIAL_TAG}` != ''"  # the trials' runs, not the cells' parent runs


def tagtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagtune", *args]


def slow_study(tmp_path: Path, name: str, n_train: int = 2000, train: dict | None = None,
               **settings) -> Path:
    """A data file whose epochs take ~0.1 s per 2000 training clips, and a study config over it
    (``train``: keys over its train block)."""
    rng = np.random.default_rng(0)
    ds = Dataset(train=make_split(rng, n_train, T=10, F=32, C=5, prefix="tr"),
                 valid=make_split(rng, 300, T=10, F=32, C=5, prefix="va"),
                 test=make_split(rng, 300, T=10, F=32, C=5, prefix="te"),
                 classes=tuple("abcde"), name="slow")
    path = data.save(ds, tmp_path / "slow.h5")
    cfg = {"data": str(path), "name": name, "storage": str(tmp_path / "studies"),
           # Every checkpoint_every epochs however short: a kill must find trials mid-way
           # through, from a checkpoint (by default one is at least 10 s after the last).
           "checkpoint_every": EVERY, "checkpoint_s": 0, "preset": "openmic",
           # The paper point's replicates (on by default) are runs these scenarios do not count;
           # a kill and resume of them is the replicate phase's, tested here with the best's.
           "paper_point": False,
           "train": {"batch_size": 64, "lr_decay_epochs": [],
                     "model": {"layers": 1, "hidden": 32, "dropout": 0.3}, **(train or {})}, **settings}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "study.yaml"


def trial_results(phase_dir: Path) -> dict[str, list[dict]]:
    """Tune's results of every trial of a phase, by trial id."""
    out = {}
    for trial_dir in sorted(p for p in phase_dir.iterdir() if p.is_dir()):
        results = read_results(trial_dir)
        if results:
            out[results[0]["trial_id"]] = results
    return out


def journal_restarts(study_dir: Path) -> dict[str, list[list[int]]]:
    """The epochs each trial reported, one list per run of it (a new one at every start)."""
    out: dict[str, list[list[int]]] = {}
    for event in read_journal(study_dir / JOURNAL):  # a line torn by a kill is left out
        if event["op"] == "start":
            out.setdefault(event["trial_id"], []).append([])
        elif event["op"] == "result":
            # The trainable's epoch, not Tune's step: Tune restores its iteration counter from
            # the checkpoint, so a trial restarted from scratch would still look continued.
            out[event["trial_id"]][-1].append(int(event["metrics"]["epoch"]))
    return {tid: [seg for seg in segs if seg] for tid, segs in out.items()}


@pytest.fixture
def cluster():
    c = RayCluster()
    try:
        yield c
    finally:
        c.stop()


def test_killed_worker_node_trials_resume_from_their_checkpoints(tmp_path, cluster):
    # The head runs no trial (no CPU to give), two worker nodes one each: every trial runs on a
    # worker node, and the first seen mid-way is the victim, whichever node it is on (with a CPU
    # on the head, a quiet run could end its trials there before one was seen on the worker).
    # ~5 s a trial: since trials report only at decisions, 30 epochs take ~2.5 s here, 60 ~5 s.
    epochs = 60
    config = slow_study(tmp_path, "multi", n_train=8000, methods=["b1"], missing=[0.0], trials=4,
                        replicates=0, epochs=epochs, grace_period=epochs, max_failures=3)
    cluster.start_node(num_cpus=0)
    workers = [cluster.start_node(), cluster.start_node()]
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(tagtune("study", "--config", str(config), "--address",
                                          cluster.address, "--quiet"),
                                  env=cluster.driver_env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    search = tmp_path / "studies" / "multi" / "search"
    try:
        victim = node = None
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)
            # Tune writes a trial's results on the driver's staging copy of the phase (in Ray's
            # session directory) and copies it to the study only at its snapshots, seconds apart.
            staged = list(cluster.root.glob("n0/session_*/artifacts/*/search/driver_artifacts"))
            for tid, results in (trial_results(staged[0]) if staged else {}).items():
                last = results[-1]
                # A trial with a checkpoint (epoch 2) behind it, and most of its epochs ahead (it
                # reports only at decisions: every EVERY epochs here).
                on = [w for w in workers if cluster.on_node(last["pid"], w)]
                if on and EVERY < last["epoch"] < epochs // 2:
                    victim, node = tid, on[0]
        assert victim is not None, f"no trial seen mid-way:\n{log.read_text()[-3000:]}"
        # The node dies: its raylet, then everything else it ran (a worker process outlives
        # its raylet for a while and could even finish its trial).
        os.kill(cluster.raylet_pid(node), signal.SIGKILL)
        kill_session(node)
        rc = driver.wait(timeout=300)
    finally:
        kill_session(driver)
    assert rc == 0, log.read_text()[-3000:]

    summary = json.loads((tmp_path / "studies" / "multi" / "summary.json").read_text())
    assert summary["cells"]["b1@0.00"]["trials"] == 4
    assert summary["cells"]["b1@0.00"]["completed"] == 4
    results = trial_results(search)
    assert len(results) == 4
    for rs in results.values():
        assert rs[-1]["epoch"] == epochs and rs[-1]["complete"]
    # Where each trial was restored, from the journal: Tune's own result.json of a restored trial
    # is copied back from the storage's last sync of it, so it can miss the epochs just before
    # the failure; the journal has every report.
    journal = journal_restarts(tmp_path / "studies" / "multi")
    assert set(journal) == set(results)
    for tid, segments in journal.items():
        assert segments[-1][-1] == epochs, (tid, segments)
        for i, after in enumerate(segments[1:], 1):
            before = [e for seg in segments[:i] for e in seg]
            # Resumed right after the last checkpoint it had reported. One exception: Tune logs a
            # function trainable's result first and registers its checkpoint only when the save
            # it then schedules on the actor returns, so a node that dies between the two resumes
            # the trial from the checkpoint before (never more than one interval lost).
            checkpointed = max([e for e in before if e % EVERY == 0], default=0)
            allowed = {checkpointed, checkpointed - EVERY} if before[-1] == checkpointed else {checkpointed}
            assert after[0] - 1 in allowed, (tid, segments)
    assert len(journal[victim]) > 1, "the victim was not retried"
    # It had reported an epoch after its first checkpoint, so that one was registered.
    assert all(seg[0] > EVERY for seg in journal[victim][1:]), journal[victim]

    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], TRIAL_RUNS, max_results=100)
    assert Counter(r.data.tags["tagtune.trial_id"] for r in runs) == dict.fromkeys(results, 1)
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
        assert sorted(steps) == list(range(1, epochs + 1))


def mlflow_equals_results(client: MlflowClient, experiment_id: str, study_dir: Path) -> int:
    """Assert MLflow holds exactly Tune's results; returns the number of runs."""
    results = {**trial_results(study_dir / "search"), **trial_results(study_dir / "replicate")}
    runs = client.search_runs([experiment_id], TRIAL_RUNS, max_results=1000)
    by_trial = {r.data.tags["tagtune.trial_id"]: r for r in runs}
    assert len(by_trial) == len(runs) and set(by_trial) == set(results)
    # Parents included: one per cell, finished, every trial of the cell nested under it.
    parents = {r.data.tags[CELL_TAG]: r for r in
               client.search_runs([experiment_id], f"tags.`{CELL_TAG}` != ''", max_results=1000)}
    assert set(parents) == {rs[0]["config"]["cell"] for rs in results.values()}
    assert all(p.info.status == "FINISHED" and any(k.startswith("val/best_") for k in p.data.metrics)
               for p in parents.values())  # the objective's best: val/best_loss, val/best_auprc_macro ...
    for tid, rs in results.items():
        run = by_trial[tid]
        assert run.info.status == "FINISHED"
        config = rs[0]["config"]
        assert run.data.tags[PARENT_TAG] == parents[config["cell"]].info.run_id
        resolved = {**to_dict(train_config(config)), "cell": config["cell"], "phase": config["phase"]}
        for key in ("method", "missing", "seed", "lr", "gamma", "epochs", "cell", "phase"):
            if applies(config["method"], key):  # a B1 run has no gamma
                assert run.data.params[key] == str(resolved[key]), (tid, key)
            else:
                assert key not in run.data.params, (tid, key)
        expected: dict[str, dict[int, float]] = {}
        # Every epoch a result carries: those held since the report before (EARLIER), then its own.
        for epoch in (e for r in rs for e in [*r.get(EARLIER, ()), r]):
            for k, v in numeric_metrics(epoch).items():
                expected.setdefault(k, {})[epoch["training_iteration"]] = v
        assert set(run.data.metrics) == set(expected)
        for k, per_step in expected.items():
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
            assert history == per_step, (tid, k)
    return len(runs)


def test_mlflow_outage_loses_nothing(tmp_path):
    config = slow_study(tmp_path, "outage", methods=["b1", "le"], missing=[0.4], trials=3,
                        replicates=1, epochs=4, grace_period=4, num_cpus=1)
    server = MlflowServer(tmp_path / "mlflow.db")
    driver = None
    try:
        server.start()
        journal = tmp_path / "studies" / "outage" / "mlflow-journal.jsonl"
        log = tmp_path / "driver.log"
        with open(log, "w") as out:
            driver = subprocess.Popen(
                tagtune("study", "--config", str(config), "--mlflow-uri", server.uri, "--quiet"),
                env=base_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None and (
                not journal.exists() or journal.read_text().count('"op": "end"') < 2):
            time.sleep(0.1)
        server.stop()  # down for the rest of the study
        rc = driver.wait(timeout=300)
        out = log.read_text()
        assert rc == 0, out[-3000:]
        assert "tagtune mlflow sync" in out  # it says what to do
        summary = json.loads((tmp_path / "studies" / "outage" / "summary.json").read_text())
        assert summary["mlflow_synced"] is False

        server.start()
        client = MlflowClient(server.uri)
        before = client.search_runs([summary["experiment_id"]], TRIAL_RUNS, max_results=1000)
        assert len(before) < 8  # 6 search trials + 2 replicates: some could not be logged
        done = subprocess.run(tagtune("mlflow", "sync", str(tmp_path / "studies" / "outage")),
                              env=base_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert mlflow_equals_results(client, summary["experiment_id"],
                                     tmp_path / "studies" / "outage") == 8
    finally:
        if driver is not None:
            kill_session(driver)
        server.stop()
