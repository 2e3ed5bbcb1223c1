"""Fused trials in a study (``fuse: N``): a cell's trials train as one stack, and each is still a
trial of its own -- Tune trial, Optuna trial, ASHA decisions, MLflow run, checkpoints -- whose
every epoch equals its config trained alone (generic path), also across a kill and a resume."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from tagtune.launch.tracking import read_journal
from tagtune.launch.trainable import Reporter
from tagtune.study.data import Dataset, load, save
from tagtune.study.fit.teachers import TeacherCache
from tagtune.study.fit.train import fit
from tagtune.study.folder import JOURNAL, StudySettings, load_settings, train_config
from tagtune.study.methods import shares_teacher
from tagtune.study.nn import device as devices
from tests.conftest import TINY_TRAIN, invoke, make_split
from tests.launch.processes import base_env
from tests.launch.test_reliability import TRIAL_RUNS, journal_restarts, slow_study
from tests.launch.test_resume import _ended, _kill_tree, _resumable, _running_at, _tagtune

# Two stacks of one CPU each on the session's 2-CPU Ray: their members (no CPU) leave both free.
FUSED = dict(methods=("b1", "le", "mt"), missing=(0.4,), trials=4, replicates=2, epochs=3,
             grace_period=1, checkpoint_every=2, checkpoint_s=0, fuse=4, paper_point=False)
# hidden = F (6): a residual on every layer, so that rounding stays rounding (tests/study/test_stacked.py).
# fp32: the equality is to fp32's rounding; in bf16 a stack's batched products (autocast) and a
# trial's own round differently, as two bf16 runs of different shapes do.
TRAIN = {**TINY_TRAIN, "model": {"layers": 2, "hidden": 6}, "precision": "fp32"}
ATOL = 1e-4


@pytest.fixture(scope="module")
def fused_study(tmp_path_factory, ray_session, tiny_dataset):
    from tagtune.launch.study import run_study

    root = tmp_path_factory.mktemp("fused")
    path = save(tiny_dataset, root / "tiny.h5")
    settings = StudySettings(data=str(path), name="fused", storage=str(root), train=TRAIN, **FUSED)
    return settings, run_study(settings, verbose=0)


def _epochs_by_trial(study_dir: Path) -> dict[str, dict[int, float]]:
    """Every trial's val/loss by epoch, from the journal (a re-run epoch: its last report)."""
    out: dict[str, dict[int, float]] = {}
    for event in read_journal(study_dir / JOURNAL):
        metrics = event.get("metrics", {})
        if event["op"] == "result" and "val/loss" in metrics and not metrics.get("replayed"):
            out.setdefault(event["trial_id"], {})[int(metrics["epoch"])] = metrics["val/loss"]
    return out


def _assert_each_trial_as_alone(settings: StudySettings, phase: str, ds: Dataset, monkeypatch) -> int:
    """Each trial's reported epochs equal its config trained alone on the generic path; the trials."""
    reported = _epochs_by_trial(settings.study_dir)
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", True)
    trials = tune.ExperimentAnalysis(str(settings.study_dir / phase)).trials
    for t in trials:
        cfg = train_config(t.config)
        teacher = None
        if shares_teacher(cfg.method) and settings.teacher_cache:  # the study's cached teacher, read
            teacher = TeacherCache(settings.teacher_cache).get(ds, cfg)
        alone = {h["epoch"]: h["val/loss"] for h in fit(ds, cfg, le_teacher=teacher).history}
        got = reported[t.trial_id]
        assert got, t.trial_id
        for epoch, value in got.items():
            assert value == pytest.approx(alone[epoch], abs=ATOL), (t.trial_id, t.config["cell"], epoch)
    return len(trials)


def test_fused_trials_are_trials_of_their_own(fused_study):
    settings, result = fused_study
    cells = result.summary["cells"]
    assert all(c["trials"] == 4 and c["failed"] == 0 and c["optuna"]["handed_out"] == 4
               for c in cells.values())
    client = MlflowClient(result.tracking_uri)
    runs = client.search_runs([result.experiment_id], TRIAL_RUNS, max_results=1000)
    assert Counter(r.data.tags["phase"] for r in runs) == {"search": 12, "replicate": 6}
    assert len({r.data.tags["tagtune.trial_id"] for r in runs}) == len(runs)
    # The search's trials really trained together: a cell's four in one stack at their first epoch.
    search = [r for r in runs if r.data.tags["phase"] == "search"]
    fused = [m.value for r in search for m in client.get_metric_history(r.info.run_id, "fused")]
    assert max(fused) == 4 and min(fused) >= 1
    # Every trial ASHA stopped, Optuna heard of as pruned; every other ran to the end. How many ASHA
    # stops is not asserted: asynchronous, it decides by the order the rung's results arrive in,
    # and a stack's members report together in an order the machine's load decides (a CI run under
    # load saw 1 of 12 stopped where a quiet one sees 3 or more).
    stopped = sum(c["stopped_early"] for c in cells.values())
    assert sum(c["optuna"]["pruned"] for c in cells.values()) == stopped
    assert all(c["completed"] + c["stopped_early"] == c["trials"] for c in cells.values())
    for trial in tune.ExperimentAnalysis(str(settings.study_dir / "search")).trials:
        # Its own checkpoint, an ordinary trial's, where it got as far as one (every 2 epochs; the
        # shared-teacher LE's epochs count from 4).
        last, ran = trial.last_result["epoch"], trial.last_result["training_iteration"]
        due = any(Reporter(trial.config).due(e) for e in range(last - ran + 1, last + 1))
        assert (trial.checkpoint is not None) == due, trial.trial_id
    for row in result.replicates:
        assert row["error"] is None and np.isfinite(row["test/f1_macro"])


def test_a_fused_phase_leaves_no_stack_behind(fused_study, ray_session):
    # Every stack and registry ended with its phase: Ray has all its CPUs back.
    from tagtune.launch import fusion

    assert not fusion._REGISTRIES
    deadline = time.monotonic() + 30
    while ray_session.available_resources().get("CPU") != ray_session.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray_session.available_resources()
        time.sleep(0.1)


def test_every_fused_epoch_equals_its_config_alone(fused_study, monkeypatch):
    settings, _ = fused_study
    ds = load(settings.data)
    assert _assert_each_trial_as_alone(settings, "search", ds, monkeypatch) == 12


@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_killed_fused_study_resumes_every_member_exactly(tmp_path, monkeypatch):
    epochs = 4
    config = slow_study(tmp_path, "fusedkill", methods=["b1", "mt"], missing=[0.4], trials=4,
                        replicates=1, epochs=epochs, grace_period=4, checkpoint_every=1, fuse=4,
                        train={"precision": "fp32"})  # fp32: see TRAIN
    env = base_env(TUNE_GLOBAL_CHECKPOINT_S="0")  # a snapshot at every step (see test_resume)
    driver = subprocess.Popen(_tagtune("study", "--config", str(config), "--quiet"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    study_dir = tmp_path / "studies" / "fusedkill"
    journal = study_dir / JOURNAL
    deadline = time.monotonic() + 240
    try:  # while a stack's members are mid-way (epoch 2 of 4 reported, none of them ended)
        while time.monotonic() < deadline and driver.poll() is None and not _running_at(journal, 2):
            time.sleep(0.02)
    finally:
        _kill_tree(driver)
    assert _ended(journal) < 8, "the kill must land before the search ended"
    checkpointed = _resumable(study_dir / "search", epochs, tmp_path / "scratch")
    assert checkpointed, "the kill must land with members mid-way, past a checkpoint"

    done = subprocess.run(_tagtune("study", "resume", str(study_dir), "--quiet"), env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((study_dir / "summary.json").read_text())
    assert {c: v["trials"] for c, v in summary["cells"].items()} == {"b1@0.40": 4, "mt@0.40": 4}
    runs = MlflowClient(summary["tracking_uri"]).search_runs([summary["experiment_id"]], TRIAL_RUNS)
    assert max(Counter(r.data.tags["tagtune.trial_id"] for r in runs).values()) == 1
    # Each member cut mid-way continued right after its checkpoint, in a new stack ...
    restarts = journal_restarts(study_dir)
    for tid, epoch in checkpointed.items():
        assert restarts[tid][-1][0] == epoch + 1, (tid, epoch, restarts[tid])
    # ... and every epoch of every member, before and after the kill, is its config's alone.
    settings = load_settings(config)
    _assert_each_trial_as_alone(settings, "search", load(settings.data), monkeypatch)


def test_fuse_is_refused_in_one_line_when_bad(tmp_path):
    rng = np.random.default_rng(0)
    ds = Dataset(train=make_split(rng, 20, prefix="tr"), valid=make_split(rng, 6, prefix="va"),
                 test=make_split(rng, 6, prefix="te"), classes=("a", "b", "c"), name="t")
    path = save(ds, tmp_path / "t.h5")
    for bad, says in (("0", "must be >= 1 (1: off) or auto, got 0"), ("many", "expected an integer")):
        out = invoke("study", "--data", path, "--fuse", bad, "--storage", tmp_path / "st")
        assert out.exit_code == 2, out.output
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("error: ") and "fuse" in line and says in line, out.stderr
    assert not (tmp_path / "st").exists()  # refused before anything is written


@pytest.mark.long
def test_a_searched_network_fills_one_stack_per_network_and_no_trial_fails(tmp_path, ray_session,
                                                                          tiny_dataset):
    """``search: {arch: [residual, paper]}`` with ``fuse``: stacks are keyed by what a stack shares,
    so a paper trial never joins a residual stack (it used to fail there, and Tune retried it)."""
    from tagtune.launch.study import run_study
    from tagtune.study.folder import LOG_FILE

    path = save(tiny_dataset, tmp_path / "tiny.h5")
    space = tmp_path / "space.yaml"
    space.write_text("search:\n  arch: [residual, paper]\n")
    settings = StudySettings(data=str(path), name="arch", storage=str(tmp_path), train=TRAIN, methods=("b1",),
                             missing=(0.0,), trials=4, replicates=1, epochs=2, grace_period=2,
                             checkpoint_every=2, fuse=4, search_space=str(space))
    result = run_study(settings, verbose=0)
    trials = tune.ExperimentAnalysis(str(settings.study_dir / "search")).trials
    archs = Counter(train_config(t.config).model.arch for t in trials)
    assert set(archs) == {"residual", "paper"}, archs  # both networks searched, so both kinds of stack
    assert all(t.status == "TERMINATED" and t.num_failures == 0 for t in trials)
    assert result.summary["cells"]["b1@0.00"]["failed"] == 0
    assert "differs from its stack" not in (settings.study_dir / LOG_FILE).read_text()
