"""A study whose driver is killed half-way resumes: no trial lost, none run or logged twice,
and a trial that had a checkpoint continues from it rather than from scratch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from tagtune.launch.tracking import journal_outcomes
from tagtune.launch.trainable import TRIAL_STATE
from tagtune.study.folder import tunestate
from tests.launch.processes import base_env
from tests.launch.test_reliability import TRIAL_RUNS, journal_restarts, slow_study

# Bounded: a hung cluster fails the test (cleanup still runs) instead of stalling CI.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]


def _tagtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagtune", *args]


def _ended(journal: Path) -> int:
    if not journal.exists():
        return 0
    return sum('"op": "end"' in line for line in journal.read_text().splitlines())


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of its session (its local Ray included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _checkpointed_epochs(search: Path, scratch: Path) -> dict[str, int]:
    """Per unfinished trial, the epoch of the checkpoint that the resume will continue from.

    Read from a copy of the killed study, repaired as ``study resume`` repairs it: the kill may
    have torn Tune's snapshot in the study (what made this test flaky), and the copy then
    holds the last whole snapshot that the resume puts back.
    """
    copy = scratch / search.parent.name
    shutil.copytree(search.parent, copy, symlinks=True)
    tunestate.repair(copy / search.name)
    out = {}
    for trial in tune.ExperimentAnalysis(str(copy / search.name)).trials:
        if trial.status != "TERMINATED" and trial.checkpoint is not None:
            state = json.loads((Path(trial.checkpoint.path) / TRIAL_STATE).read_text())
            out[trial.trial_id] = int(state["last"]["epoch"])
    return out


def _resumable(search: Path, epochs: int, scratch: Path) -> dict[str, int]:
    """The unfinished trials of the resumed snapshot whose checkpoint leaves epochs to run."""
    return {tid: e for tid, e in _checkpointed_epochs(search, scratch).items() if e < epochs}


def _running_at(journal: Path, step: int) -> bool:
    """Whether a trial has reported ``step`` as its last result and has not ended."""
    last, ended = {}, set()
    for line in journal.read_text().splitlines() if journal.exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if event["op"] == "result":
            last[event["trial_id"]] = event["step"]
        elif event["op"] == "end":
            ended.add(event["trial_id"])
    return any(s == step and tid not in ended for tid, s in last.items())


def test_killed_study_resumes_without_duplicates(tmp_path):
    epochs = 4
    config = slow_study(tmp_path, "killed", methods=["b1", "mt"], missing=[0.0, 0.4], trials=3,
                        replicates=1, epochs=epochs, grace_period=1, checkpoint_every=1)
    # Tune snapshots its experiment (what resume reads) at most every 10 s by default, longer
    # than this whole search: snapshot at every step instead, so that the kill finds the trials
    # running at that moment with their checkpoints.
    env = base_env(TUNE_GLOBAL_CHECKPOINT_S="0")
    driver = subprocess.Popen(_tagtune("study", "--config", str(config), "--quiet"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    study_dir = tmp_path / "studies" / "killed"
    journal = study_dir / "mlflow-journal.jsonl"
    deadline = time.monotonic() + 240
    try:
        # Half-way, while a trial is between ASHA's rungs (epochs 1 and 3) with a checkpoint of
        # epoch 2 behind it: it is still running, mid-way, when the kill lands.
        while time.monotonic() < deadline and driver.poll() is None and not (
                _ended(journal) >= 4 and _running_at(journal, 2)):
            time.sleep(0.02)
    finally:
        _kill_tree(driver)
    ended_before = _ended(journal)
    assert 4 <= ended_before < 12, "the kill must land half-way through the search"
    checkpointed = _resumable(study_dir / "search", epochs, tmp_path / "scratch")
    assert checkpointed, "the kill must land with a trial mid-way, past a checkpoint"
    # Of those, the ones the journal saw end after that snapshot are not trained again.
    ended = {tid for tid, (status, _) in journal_outcomes(journal).items() if status == "FINISHED"}

    done = subprocess.run(_tagtune("study", "resume", str(study_dir), "--quiet"), env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]

    summary = json.loads((study_dir / "summary.json").read_text())
    assert {c: v["trials"] for c, v in summary["cells"].items()} == {
        "b1@0.00": 3, "b1@0.40": 3, "mt@0.00": 3, "mt@0.40": 3}
    assert all(v["optuna"]["handed_out"] == 3 for v in summary["cells"].values())
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], TRIAL_RUNS, max_results=1000)
    trial_ids = Counter(r.data.tags["tagtune.trial_id"] for r in runs)
    assert max(trial_ids.values()) == 1, "a trial was logged twice"
    assert Counter(r.data.tags["phase"] for r in runs) == {"search": 12, "replicate": 4}
    parents = client.search_runs([summary["experiment_id"]], "tags.`tagtune.cell_run` != ''")
    assert sorted(r.info.run_name for r in parents) == ["b1@0.00", "b1@0.40", "mt@0.00", "mt@0.40"]
    assert all(r.info.status == "FINISHED" for r in parents)
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:  # every epoch once, however the kill cut the logging
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
        assert len(steps) == len(set(steps))

    # Every trial cut by the kill past a checkpoint was started again and continued right after
    # that checkpoint, not from epoch 1; one that had ended since was not trained again. (From
    # the journal, which has every report: a trial's result.json is Tune's last sync of it and
    # can lack the epochs just before the kill.)
    journal_runs = journal_restarts(study_dir)
    for tid, epoch in checkpointed.items():
        runs_of = journal_runs[tid]
        if tid in ended:
            assert len(runs_of) == 1, (tid, epoch, runs_of)
        else:
            assert len(runs_of) == 2 and runs_of[1][0] == epoch + 1, (tid, epoch, runs_of)

def test_ctrl_c_stops_with_how_to_resume_and_resume_finishes(tmp_path):
    config = slow_study(tmp_path, "ctrlc", methods=["b1"], missing=[0.0], trials=4, replicates=1,
                        epochs=8, grace_period=8, checkpoint_every=2)
    study_dir = tmp_path / "studies" / "ctrlc"
    env = base_env()
    returncode, err = ctrl_c_study(config, study_dir, '"op": "result"', 180, env)
    assert returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"interrupted: {study_dir}: interrupted in the search phase, its state saved; "
        f"continue with: tagtune study resume {study_dir}")
    # Nothing was concluded from half a search.
    assert not (study_dir / "best.json").exists() and not (study_dir / "summary.json").exists()
    assert not (study_dir / "replicate").exists()

    done = subprocess.run(_tagtune("study", "resume", str(study_dir), "--quiet"), env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((study_dir / "summary.json").read_text())
    cell = summary["cells"]["b1@0.00"]
    assert (cell["trials"], cell["completed"], cell["optuna"]["handed_out"]) == (4, 4, 4)
    assert len(summary["replicates"]) == 1
    runs = MlflowClient(summary["tracking_uri"]).search_runs([summary["experiment_id"]])
    trials = [r for r in runs if "tagtune.trial_id" in r.data.tags]
    assert max(Counter(r.data.tags["tagtune.trial_id"] for r in trials).values()) == 1
    assert len(trials) == 5 and len(runs) == 6  # and the cell's parent run
    assert all(r.info.status == "FINISHED" for r in runs)


def ctrl_c_study(config: Path, study_dir: Path, needle: str, wait_s: float,
                 env: dict[str, str]) -> tuple[int | None, str]:
    """``tagtune study --config CONFIG --quiet`` in its own process, sent SIGINT (what Ctrl-C
    sends) once its journal holds ``needle`` (or after ``wait_s``): its exit code and stderr."""
    driver = subprocess.Popen(_tagtune("study", "--config", str(config), "--quiet"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    journal = study_dir / "mlflow-journal.jsonl"
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and driver.poll() is None and not (
                journal.exists() and needle in journal.read_text()):
            time.sleep(0.1)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=180)
    finally:
        _kill_tree(driver)
    return driver.returncode, err
