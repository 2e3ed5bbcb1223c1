"""A study killed at any instant resumes: each state file torn the way a kill tears it.

One study is killed half-way through its search (the driver's whole session, SIGKILL); each
test resumes its own copy of it with one file torn -- emptied, or cut at half, or the journal
cut mid-line -- and the study must end exactly: every cell's trial count, each trial once in
MLflow, every run FINISHED. A tear that nothing can repair is refused in one line, exit 2,
with every file as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tagtune.study.folder import JOURNAL, tunestate
from tests.launch.processes import base_env, kill_session
from tests.launch.test_reliability import TRIAL_RUNS, slow_study, tagtune
from tests.launch.test_resume import _ended, _running_at

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]
CELLS = {"b1@0.00": 3, "b1@0.40": 3}  # trials per cell


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A study of 2 cells x 3 trials (4 epochs, a checkpoint and a Tune snapshot every epoch),
    killed once 2 trials have ended and one is mid-way, and torn by nothing but what each test
    tears: a kill that happened to land in Tune's in-place rewrite of its experiment state (more
    likely the busier the machine) is a study of test_resume's kind, not this one's; the kill is
    done again, at most 4 times."""
    for attempt in range(4):
        study_dir = _kill_half_way(tmp_path_factory.mktemp(f"torn{attempt}"))
        if not tunestate.torn(study_dir / "search"):
            return study_dir
    pytest.fail("every kill tore Tune's state itself")


def _kill_half_way(tmp: Path) -> Path:
    config = slow_study(tmp, "killed", methods=["b1"], missing=[0.0, 0.4], trials=3,
                        replicates=1, epochs=4, grace_period=1, checkpoint_every=1)
    driver = subprocess.Popen(tagtune("study", "--config", str(config), "--quiet"),
                              env=base_env(TUNE_GLOBAL_CHECKPOINT_S="0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    study_dir = tmp / "studies" / "killed"
    journal = study_dir / JOURNAL
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and driver.poll() is None and not (
                _ended(journal) >= 2 and _running_at(journal, 2)):
            time.sleep(0.02)
    finally:
        kill_session(driver)  # the driver, its Ray and every worker of its session
    assert 2 <= _ended(journal) < 6, "the kill must land half-way through the search"
    assert tunestate.generations(study_dir / "search"), "no snapshot was kept"
    return study_dir


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _mid_line(path: Path) -> None:
    """The journal as a kill during an append leaves it: its last event cut, no newline."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])


TEARS = {  # kind: (file, how it is torn)
    "experiment state emptied": ("search/experiment_state-*.json", _empty),
    "experiment state cut at half": ("search/experiment_state-*.json", _half),
    "searcher state cut at half": ("search/searcher-state-*.pkl", _half),
    "search generator state emptied": ("search/search_gen_state-*.json", _empty),
    "journal cut mid-line": (JOURNAL, _mid_line),
}


def _copy(killed: Path, tmp_path: Path) -> Path:
    study = tmp_path / "killed"  # a moved study resumes: its paths are relative to it
    shutil.copytree(killed, study, symlinks=True)
    return study


def _resume(study: Path) -> subprocess.CompletedProcess:
    return subprocess.run(tagtune("study", "resume", str(study), "--quiet"), env=base_env(),
                          capture_output=True, text=True, timeout=400)


@pytest.mark.parametrize("kind", TEARS)
def test_a_torn_file_resumes_exactly(killed, tmp_path, kind):
    study = _copy(killed, tmp_path)
    pattern, tear = TEARS[kind]
    (target,) = sorted(study.glob(pattern))[-1:]
    tear(target)

    done = _resume(study)
    assert done.returncode == 0, done.stderr[-3000:]
    if target.parent.name == "search":  # Tune's snapshot: the kept one was put back, and said so
        assert "note: search state torn by the interruption; resuming from the snapshot of " \
            in done.stderr, done.stderr[-2000:]
        assert "trials re-run from their checkpoints" in done.stderr
        assert [p.name.rsplit(".", 1)[0] for p in (study / "search" / tunestate.TORN).iterdir()] \
            == [target.name]
    else:
        assert "state torn" not in done.stderr

    _check_exact(study)
    summary = json.loads((study / "summary.json").read_text())
    client = MlflowClient(summary["tracking_uri"])
    parents = client.search_runs([summary["experiment_id"]], "tags.`tagtune.cell_run` != ''")
    assert sorted(r.info.run_name for r in parents) == sorted(CELLS)
    assert all(r.info.status == "FINISHED" for r in parents)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_tear_nothing_can_repair_is_refused_and_changes_nothing(killed, tmp_path):
    study = _copy(killed, tmp_path)
    shutil.rmtree(study / "search" / tunestate.LAST_GOOD)  # as a study of an older tagtune
    (state,) = sorted((study / "search").glob("experiment_state-*.json"))[-1:]
    _empty(state)
    before = _digest(study)

    done = _resume(study)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(f"error: {state.parent}: {state.name}: torn by the interruption (empty)")
    assert "cannot be resumed" in lines[0] and "new --name" in lines[0]
    assert _digest(study) == before


def _check_exact(study: Path) -> None:
    """The study ended as if never interrupted: every count exact, each trial once, all FINISHED."""
    summary = json.loads((study / "summary.json").read_text())
    assert {c: v["trials"] for c, v in summary["cells"].items()} == CELLS
    assert all(v["optuna"]["handed_out"] == CELLS[c] for c, v in summary["cells"].items())
    assert len(summary["replicates"]) == len(CELLS)
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], TRIAL_RUNS, max_results=1000)
    assert max(Counter(r.data.tags["tagtune.trial_id"] for r in runs).values()) == 1
    assert Counter(r.data.tags["phase"] for r in runs) == {"search": 6, "replicate": 2}
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
        assert len(steps) == len(set(steps)) > 0


# The driver dies as Tune would have begun the phase: tuner.pkl written, no experiment state yet.
DIE_BEFORE_TUNE_RUNS = ("import os, sys\n"
                        "import ray.tune.impl.tuner_internal as tuner_internal\n"
                        "tuner_internal.run = lambda *a, **k: os._exit(9)\n"
                        "from tagtune.launch.cli import main\n"
                        "sys.argv[0] = 'tagtune'\n"
                        "main()\n")


def test_a_study_killed_before_tunes_first_snapshot_resumes_exactly(tmp_path):
    """A kill after Tune wrote the phase's tuner.pkl and before its first experiment state: the
    resume begins the phase afresh and the study ends exactly. Tune's own restore of such a
    phase "restarts" it with one trial, saves that as the phase, and every later resume ended
    after that one trial, interrupted (found by the random kills below, once in 24)."""
    config = slow_study(tmp_path, "early", methods=["b1"], missing=[0.0, 0.4], trials=3,
                        replicates=1, epochs=4, grace_period=1, checkpoint_every=1)
    study = tmp_path / "studies" / "early"
    driver = subprocess.Popen([sys.executable, "-c", DIE_BEFORE_TUNE_RUNS, "study", "--config",
                               str(config), "--quiet"], env=base_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        code = driver.wait(timeout=240)
    finally:
        kill_session(driver)  # its Ray
    assert code == 9
    assert (study / "search" / tunestate.TUNER_FILE).is_file()
    assert not tunestate.restorable(study / "search")
    done = _resume(study)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_exact(study)


ROUNDS = int(os.environ.get("TAGTUNE_KILL_ROUNDS", "4"))


@pytest.mark.slow
@pytest.mark.timeout(300 * ROUNDS)
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_b_killed_twice_at_random_instants_resumes_exactly(tmp_path, round_):
    """Kill the driver's whole session at a random instant, resume, kill the resume at another,
    resume again: the study ends exactly. With a Tune snapshot every step, the kills land
    during a snapshot's copy often enough to tear it (see the note the resume prints)."""
    rng = random.Random(round_)  # the instants are reproducible; where they land is not
    config = slow_study(tmp_path, "random", methods=["b1"], missing=[0.0, 0.4], trials=3,
                        replicates=1, epochs=4, grace_period=1, checkpoint_every=1)
    study = tmp_path / "studies" / "random"
    env = base_env(TUNE_GLOBAL_CHECKPOINT_S="0")
    commands = [tagtune("study", "--config", str(config), "--quiet"),
                tagtune("study", "resume", str(study), "--quiet")]
    for command, (low, high) in zip(commands, [(1.0, 12.0), (3.0, 12.0)], strict=True):
        at = rng.uniform(low, high)
        driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            # The instants count from when the study exists (study.yaml written): on a loaded
            # machine the imports alone can take longer than the window, and a driver killed
            # before it wrote anything leaves no study to resume (it is started again instead).
            deadline = time.monotonic() + 120
            while not (study / "study.yaml").exists() and driver.poll() is None and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            driver.wait(timeout=at)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_session(driver)  # the driver, its Ray and every worker of its session
    done = _resume(study)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_exact(study)
