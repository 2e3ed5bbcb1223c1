"""``tagtune study`` through the CLI on the session's local Ray: LE's teacher shared once per key
(and not at all with --no-share-le-teacher), ``study --config FILE``, RAY_ADDRESS, a moved
study resumed, and a directory that is not a study."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray import tune

from tagtune.launch.trainable import EARLIER
from tagtune.study.data import load
from tagtune.study.fit.teachers import TeacherCache, teacher_key
from tagtune.study.folder import train_config
from tests.conftest import TINY_STUDY, TINY_TRAIN, invoke
from tests.launch.processes import free_port

pytestmark = pytest.mark.timeout(600)  # a real (tiny) study on 2 busy cores: slow, never hung
TRIAL_TAG = "tagtune.trial_id"


def trials(study_dir, phase: str) -> list:
    return tune.ExperimentAnalysis(str(study_dir / phase)).trials


def trial_runs(tracking_uri: str, experiment_id: str) -> list:
    runs = MlflowClient(tracking_uri).search_runs([experiment_id], max_results=1000)
    return [r for r in runs if TRIAL_TAG in r.data.tags]  # not a cell's parent run


def test_le_teacher_trained_once_per_key_in_a_real_study(tiny_study):
    settings, result = tiny_study
    ds = load(settings.data)
    le = [(phase, t) for phase in ("search", "replicate") for t in trials(result.study_dir, phase)
          if t.config["method"] == "le"]
    expected = {teacher_key(ds, train_config(t.config)) for _, t in le}
    # Two proportions x seeds 0 (search and first replicate) and 1 (second replicate).
    assert len(expected) == len(TINY_STUDY["missing"]) * TINY_STUDY["replicates"] == 4
    assert len(le) > len(expected)  # so several trials did share a teacher
    trained = [t["key"] for t in TeacherCache(settings.teacher_cache).trainings()]
    assert sorted(trained) == sorted(expected)  # each key exactly once, nothing else
    assert {p.name for p in settings.teacher_cache.iterdir() if p.is_dir()} == expected
    # And no LE trial trained a teacher of its own: each reported its student's epochs only.
    E = TINY_STUDY["epochs"]
    for phase, t in le:
        results = _epochs(result.study_dir / phase, t.trial_id)
        if t.config.get("reused_checkpoint"):  # the search's best trial's final state: no epoch
            assert [(x["epoch"], x["stage"]) for x in results] == [(2 * E, "student")]
            continue
        assert results[0]["epoch"] == E + 1 and {x["stage"] for x in results} == {"student"}


@pytest.fixture(scope="module")
def own_teacher_study(ray_session, tiny_dataset, tmp_path_factory):
    """``tagtune study --config FILE --no-share-le-teacher``: LE only, 2 trials, 1 replicate."""
    from tagtune.study import data

    root = tmp_path_factory.mktemp("own-teacher")
    path = data.save(tiny_dataset, root / "tiny.h5")
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(path), "name": "own", "storage": str(root / "studies"), "methods": ["le"],
        "missing": [0.4], "trials": 2, "replicates": 1, "epochs": 2, "grace_period": 2,
        "checkpoint_every": 2, "share_le_teacher": True,  # the flag below overrides it
        "train": TINY_TRAIN}))
    r = invoke("study", "--config", config, "--no-share-le-teacher", "--quiet")
    return root / "studies" / "own", r


def test_study_config_file_and_no_shared_teacher(own_teacher_study):
    study_dir, r = own_teacher_study
    assert r.exit_code == 0, r.output
    assert f"study:     {study_dir}" in r.stdout
    saved = yaml.safe_load((study_dir / "study.yaml").read_text())
    assert saved["share_le_teacher"] is False and (saved["trials"], saved["epochs"]) == (2, 2)
    assert not (study_dir / "le-teachers").exists()
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["cells"]["le@0.40"]["trials"] == 2 and len(summary["replicates"]) == 1
    # Every trial trained its own teacher: both stages reported, epochs 1..4 -- but the one
    # replicate (seed 0) is the search's best trial's final state: one report, the last epoch.
    for phase in ("search", "replicate"):
        for t in trials(study_dir, phase):
            assert t.config.get("le_teacher_lr") is None
            results = _epochs(study_dir / phase, t.trial_id)
            # (a replicate's last report repeats its last epoch with the test metrics)
            stages = dict((x["epoch"], x["stage"]) for x in results)
            trained = {4: "student"} if phase == "replicate" else {
                1: "teacher", 2: "teacher", 3: "student", 4: "student"}
            assert stages == trained, (phase, t)


def _epochs(phase_dir, trial_id: str) -> list[dict]:
    """Every epoch a trial reported, in order: an epoch between two decisions rides in the next
    report (tagtune.launch.trainable.EARLIER)."""
    rows = [json.loads(line) for line in _result_lines(phase_dir, trial_id)]
    return [e for row in rows for e in [*row.get(EARLIER, []), row]]


def _result_lines(phase_dir, trial_id: str) -> list[str]:
    (trial_dir,) = [p for p in phase_dir.iterdir() if p.is_dir() and p.name.endswith(trial_id)]
    return (trial_dir / "result.json").read_text().splitlines()


def test_a_moved_study_resumes_where_it_now_lives(tiny_study, tmp_path):
    _, result = tiny_study
    moved = shutil.copytree(result.study_dir, tmp_path / "elsewhere" / result.study_dir.name)
    before = len(trial_runs(f"sqlite:///{moved / 'mlflow.db'}", result.experiment_id))
    original = (result.study_dir / "summary.json").read_text()
    r = invoke("study", "resume", moved, "--quiet")
    assert r.exit_code == 0, r.output
    assert f"study:     {moved}" in r.stdout and f"sqlite:///{moved / 'mlflow.db'}" in r.stdout
    summary = json.loads((moved / "summary.json").read_text())
    assert summary["tracking_uri"] == f"sqlite:///{moved / 'mlflow.db'}"
    assert {c: v["trials"] for c, v in summary["cells"].items()} == {
        c: v["trials"] for c, v in result.summary["cells"].items()}
    assert len(summary["replicates"]) == len(result.replicates)
    # Nothing ran again, nothing was logged twice, and the original study was left alone.
    assert len(trial_runs(summary["tracking_uri"], summary["experiment_id"])) == before
    assert (result.study_dir / "summary.json").read_text() == original


def test_ray_address_from_the_environment_is_used(tiny_study, tiny_dataset, tmp_path, monkeypatch):
    from tagtune.study import data

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", address)
    path = data.save(tiny_dataset, tmp_path / "tiny.h5")
    runs = [invoke("study", "--data", path, "--storage", tmp_path / "st", "--methods", "b1",
                   "--missing", "0", "--trials", "1", "--replicates", "0", "--epochs", "1",
                   "--grace-period", "1", "--quiet")]
    moved = shutil.copytree(tiny_study[1].study_dir, tmp_path / "copy" / tiny_study[1].study_dir.name)
    runs.append(invoke("study", "resume", moved, "--quiet"))
    for r in runs:
        assert r.exit_code == 2, r.output
        (line,) = r.stderr.strip().splitlines()[-1:]
        assert line.startswith("error: ") and "address" in line and address in line, r.stderr
    assert not (tmp_path / "st" / "study" / "search").exists()


@pytest.mark.parametrize("command", [["study", "resume"], ["mlflow", "sync"]])
def test_not_a_study_directory_is_one_line_and_exit_2(tmp_path, command):
    r = invoke(*command, tmp_path)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a study directory" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written there
