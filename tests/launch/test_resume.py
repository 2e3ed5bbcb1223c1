"""A study whose driver is killed half-way resumes: no trial lost, none run or logged twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from tagtune.study import data

STUDY = ["--methods", "b1,mt", "--missing", "0,0.4", "--trials", "3", "--replicates", "1",
         "--epochs", "4", "--grace-period", "1", "--name", "killed", "--quiet"]


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


def test_killed_study_resumes_without_duplicates(tmp_path, tiny_dataset):
    path = data.save(tiny_dataset, tmp_path / "tiny.h5")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    storage = tmp_path / "studies"
    cmd = _tagtune("study", "--data", str(path), "--storage", str(storage), *STUDY)
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    study_dir = storage / "killed"
    journal = study_dir / "mlflow-journal.jsonl"
    deadline = time.monotonic() + 240
    try:
        while _ended(journal) < 4 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
    finally:
        _kill_tree(driver)
    ended_before = _ended(journal)
    assert 4 <= ended_before < 12, "the kill must land half-way through the search"

    done = subprocess.run(_tagtune("study", "resume", str(study_dir), "--quiet"), env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]

    summary = json.loads((study_dir / "summary.json").read_text())
    assert {c: v["trials"] for c, v in summary["cells"].items()} == {
        "b1@0.00": 3, "b1@0.40": 3, "mt@0.00": 3, "mt@0.40": 3}
    assert all(v["optuna"]["handed_out"] == 3 for v in summary["cells"].values())
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], max_results=1000)
    trial_ids = Counter(r.data.tags["tagtune.trial_id"] for r in runs)
    assert max(trial_ids.values()) == 1, "a trial was logged twice"
    assert Counter(r.data.tags["phase"] for r in runs) == {"search": 12, "replicate": 4}
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:  # every epoch once, however the kill cut the logging
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
        assert len(steps) == len(set(steps))
