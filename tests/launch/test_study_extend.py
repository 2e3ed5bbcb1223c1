"""``tagtune study extend``: a finished study grown by a method, a proportion, trials or
replicates is what one study with the union of the settings would have run -- nothing finished
runs or is logged again, MLflow's counts are exact -- and a change that would make old and new
trials incomparable is refused in one line before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tagtune.analysis.importance import optuna_storage
from tagtune.launch.scheduler import CellASHA
from tagtune.study.data import save
from tagtune.study.folder import load_study, optuna_store, read_rounds
from tests.conftest import TINY_TRAIN, invoke, make_split
from tests.launch.processes import base_env
from tests.launch.test_resume import _kill_tree

pytestmark = pytest.mark.timeout(600)  # real (tiny) studies on 2 busy cores: slow, never hung
TRIAL_TAG, CELL_TAG, SUPERSEDED = "tagtune.trial_id", "tagtune.cell_run", "tagtune.superseded"
BASE = dict(methods=["b1"], missing=[0.0], trials=2, replicates=2, epochs=2, grace_period=1,
            checkpoint_every=1, paper_point=False)  # paper point: tests/launch/test_objective_study.py


@pytest.fixture(scope="module")
def base_study(ray_session, tiny_dataset, tmp_path_factory) -> Path:
    """A finished study of one cell (b1@0.00): 2 trials, 2 replicates. Each test grows a copy."""
    from tagtune.launch.study import run_study
    from tagtune.study.folder import StudySettings

    root = tmp_path_factory.mktemp("extend")
    path = save(tiny_dataset, root / "tiny.h5")
    settings = StudySettings(data=str(path), name="grow", storage=str(root / "studies"), **BASE,
                             train=TINY_TRAIN)
    run_study(settings, verbose=0)
    return settings.study_dir


def _copy(base: Path, tmp_path: Path) -> Path:
    d = tmp_path / "studies" / base.name
    shutil.copytree(base, d, symlinks=True)
    return d


def _runs(study_dir: Path) -> dict:
    settings = load_study(study_dir)
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name(settings.name)
    return {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}


def _trial_runs(runs: dict) -> list:
    return [r for r in runs.values() if TRIAL_TAG in r.data.tags]


def _phases(runs: dict, counted: bool = True) -> Counter:
    """Trial runs per phase (``counted``: not superseded)."""
    return Counter(r.data.tags["phase"] for r in _trial_runs(runs)
                   if not counted or SUPERSEDED not in r.data.tags)


def _check_grown(before: dict, after: dict, cells: set[str]) -> None:
    """Earlier trial runs unchanged (a superseded tag aside), one run per trial, every run
    FINISHED under its cell's one parent run."""
    for run_id, old in before.items():
        if TRIAL_TAG not in old.data.tags:
            continue
        new = after[run_id]
        assert (new.info.end_time, new.data.metrics, new.data.params) == (
            old.info.end_time, old.data.metrics, old.data.params)
        assert {k: v for k, v in new.data.tags.items() if k != SUPERSEDED} == old.data.tags
    trials = _trial_runs(after)
    assert max(Counter(r.data.tags[TRIAL_TAG] for r in trials).values()) == 1
    parents = {r.info.run_name: r for r in after.values() if CELL_TAG in r.data.tags}
    assert set(parents) == cells and len(after) == len(trials) + len(cells)
    assert all(r.info.status == "FINISHED" for r in after.values())
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["cell"]].info.run_id


def _extend(study_dir: Path, *args) -> None:
    result = invoke("study", "extend", study_dir, *args, "--quiet")
    assert result.exit_code == 0, result.output


def _optuna(study_dir: Path, cell: str) -> list:
    return optuna.load_study(study_name=cell, storage=optuna_storage(optuna_store(study_dir))).trials


@pytest.mark.long
def test_extend_by_a_method_and_a_proportion_searches_and_replicates_the_new_cells(base_study, tmp_path):
    # One extension along both axes (a method, a proportion): three new cells, b0 at both
    # proportions and b1 at the new one, each searched and replicated as any cell is.
    d = _copy(base_study, tmp_path)
    before = _runs(d)
    _extend(d, "--methods", "b0", "--missing", "0.4")
    after = _runs(d)
    added = {"b0@0.00", "b0@0.40", "b1@0.40"}
    _check_grown(before, after, {"b1@0.00", *added})
    assert _phases(after) == {"search": 8, "replicate": 8} and _phases(after, False) == _phases(after)
    assert load_study(d).missing == (0.0, 0.4) and load_study(d).methods == ("b1", "b0")
    summary = json.loads((d / "summary.json").read_text())
    assert {c: v["trials"] for c, v in summary["cells"].items()} == dict.fromkeys({"b1@0.00", *added}, 2)
    assert sorted((r["cell"], r["seed"]) for r in summary["replicates"]) == sorted(
        (c, seed) for c in {"b1@0.00", *added} for seed in (0, 1))
    rounds = read_rounds(d)
    assert [r["round"] for r in rounds] == [1, 2] and set(rounds[1]["added_cells"]) == added
    assert rounds[1]["ended"] and not rounds[1]["grown_cells"]
    # The new cell's Optuna study starts from the paper's point, as any cell's does.
    assert _optuna(d, "b0@0.00")[0].user_attrs.get("paper_point") is True
    assert len(_optuna(d, "b1@0.00")) == 2
    # The analysis and the exported configs cover the union; the report names the round.
    from tagtune.analysis.pipeline import analyze

    analyze(d, log_mlflow=False)
    import pandas as pd

    table = pd.read_csv(d / "analysis" / "trials.csv")
    assert Counter(zip(table["cell"], table["phase"], strict=True)) == {
        (c, phase): 2 for c in {"b1@0.00", *added} for phase in ("search", "replicate")}
    report = (d / "analysis" / "report.html").read_text()
    assert "round 2 (" in report and all(c in report.split("round 2 (", 1)[1] for c in added)
    # Round 1's start is known (its first Optuna trial's), not "?".
    assert rounds[0]["started"] and rounds[0]["started"] <= rounds[0]["ended"]
    assert f"round 1 ({rounds[0]['started']} to {rounds[0]['ended']})" in report and "?" not in \
        report.split("<h2>Rounds</h2>", 1)[1].split("</ul>", 1)[0]
    out = tmp_path / "best"
    assert invoke("export-best", d, "--out", out).exit_code == 0
    assert {p.name for p in out.glob("*.yaml")} >= {"b0_0.00.yaml", "b0_0.40.yaml", "b1_0.00.yaml",
                                                    "b1_0.40.yaml"}


@pytest.mark.long
def test_extend_by_trials_continues_the_cells_optuna_study(base_study, tmp_path):
    d = _copy(base_study, tmp_path)
    before = _runs(d)
    best_before = json.loads((d / "best.json").read_text())["b1@0.00"]["trial_id"]
    _extend(d, "--trials", "4")
    after = _runs(d)
    _check_grown(before, after, {"b1@0.00"})
    # One Optuna study of 4 trials: the earlier 2 and 2 more; the paper's point asked once.
    trials = _optuna(d, "b1@0.00")
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [bool(t.user_attrs.get("paper_point")) for t in trials] == [True, False, False, False]
    search = [r for r in _trial_runs(after) if r.data.tags["phase"] == "search"]
    assert sorted(r.info.run_name for r in search) == [f"b1@0.00 #{n}" for n in range(4)]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["cells"]["b1@0.00"]["trials"] == 4
    assert summary["cells"]["b1@0.00"]["optuna"]["handed_out"] == 4
    rounds = read_rounds(d)
    assert rounds[1]["grown_cells"] == {"b1@0.00": 2}
    best_after = json.loads((d / "best.json").read_text())["b1@0.00"]["trial_id"]
    superseded = [r for r in _trial_runs(after) if SUPERSEDED in r.data.tags]
    if best_after == best_before:  # the same best config: its replicates stand
        assert _phases(after, False) == {"search": 4, "replicate": 2} and not superseded
        assert not (d / "replicate.2").exists()
    else:  # a new best: replicated again, the earlier replicates kept in MLflow, superseded
        assert _phases(after) == {"search": 4, "replicate": 2}
        assert _phases(after, False) == {"search": 4, "replicate": 4}
        assert sorted(r.data.tags[TRIAL_TAG] for r in superseded) == rounds[1]["superseded"]
        assert all(r.data.tags["phase"] == "replicate" for r in superseded)
    assert sorted(r["seed"] for r in summary["replicates"]) == [0, 1]


@pytest.mark.long
def test_extend_by_replicates_adds_only_the_missing_seeds(base_study, tmp_path):
    d = _copy(base_study, tmp_path)
    before = _runs(d)
    _extend(d, "--replicates", "3")
    after = _runs(d)
    _check_grown(before, after, {"b1@0.00"})
    assert _phases(after, False) == {"search": 2, "replicate": 3}
    assert not (d / "search.2").exists()
    new = [r for r in _trial_runs(after) if r.info.run_id not in before]
    assert [r.info.run_name for r in new] == ["b1@0.00 seed 2"]
    summary = json.loads((d / "summary.json").read_text())
    assert sorted(r["seed"] for r in summary["replicates"]) == [0, 1, 2]
    parent = next(r for r in after.values() if CELL_TAG in r.data.tags)
    assert parent.data.metrics["replicates"] == 3


@pytest.mark.long
def test_a_cell_whose_best_changed_is_replicated_again_and_its_old_replicates_superseded(
        base_study, tmp_path):
    d = _copy(base_study, tmp_path)
    # As if the round's search had found a new best: the record of the best before it is not
    # the best after (the search of the round is what changes it; here it adds no trial).
    best = json.loads((d / "best.json").read_text())
    best["b1@0.00"]["trial_id"] = "an-earlier-best"
    (d / "best.json").write_text(json.dumps(best))
    before = _runs(d)
    _extend(d, "--replicates", "3")
    after = _runs(d)
    _check_grown(before, after, {"b1@0.00"})
    superseded = sorted(r.data.tags[TRIAL_TAG] for r in _trial_runs(after) if SUPERSEDED in r.data.tags)
    assert len(superseded) == 2 and superseded == read_rounds(d)[1]["superseded"]
    assert all(before[r.info.run_id].data.tags["phase"] == "replicate" for r in _trial_runs(after)
               if SUPERSEDED in r.data.tags)
    assert _phases(after) == {"search": 2, "replicate": 3}
    assert _phases(after, False) == {"search": 2, "replicate": 5}
    summary = json.loads((d / "summary.json").read_text())
    assert sorted(r["seed"] for r in summary["replicates"]) == [0, 1, 2]
    from tagtune.analysis.pipeline import analyze

    analyze(d, log_mlflow=False)
    import pandas as pd

    table = pd.read_csv(d / "analysis" / "trials.csv")
    reps = table[table["phase"] == "replicate"]
    assert sorted(reps["seed"]) == [0, 1, 2] and not set(reps["trial_id"]) & set(superseded)


@pytest.mark.long
def test_refused_changes_are_one_line_exit_2_and_change_nothing(base_study, tmp_path, tiny_dataset):
    d = _copy(base_study, tmp_path)
    files = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    import numpy as np

    rng = np.random.default_rng(1)
    other = type(tiny_dataset)(train=make_split(rng, 40, prefix="tr"),
                               valid=make_split(rng, 12, prefix="va"),
                               test=make_split(rng, 12, prefix="te"), classes=("a", "b", "c"),
                               name="tiny")
    other_file = save(other, tmp_path / "other.h5")
    same_file = tmp_path / "moved.h5"
    shutil.copy(load_study(d).data, same_file)
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({"train": {**TINY_TRAIN, "model": {"layers": 2, "hidden": 8}}}))
    cases = {
        ("--epochs", "3"): "epochs:",
        ("--data", other_file): "data: a different data file",
        ("--config", model): "train.model:",
        ("--methods", "nope"): "methods:",
        ("--missing", "1.5"): "missing:",
        ("--trials", "1"): "trials:",
        # The same content under another path is the same data: refused only for adding nothing.
        ("--data", same_file): "nothing to add",
    }
    for args, says in cases.items():
        result = invoke("study", "extend", d, *args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], (args, result.output)
    (d / "summary.json").unlink()  # as if the study had not reached its end
    result = invoke("study", "extend", d, "--methods", "b0")
    assert result.exit_code == 2 and "resume it first" in result.output
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == {
        p: b for p, b in files.items() if p.name != "summary.json"}


def test_asha_of_a_later_round_knows_the_earlier_rungs():
    class Trial:
        trial_id, config = "new", {"cell": "c"}

    def first_rung(earlier):
        asha = CellASHA(max_t=9, grace_period=1, reduction_factor=3, earlier=earlier)
        asha.set_search_properties("val/best_loss", "min")
        asha.on_trial_add(None, Trial())
        return asha.on_trial_result(None, Trial(), {"budget": 1, "val/best_loss": 0.9})

    assert first_rung(None) == "CONTINUE"  # nothing to compare with: the first trial goes on
    earlier = {"c": {f"t{i}": [(1, 0.5 + i / 10)] for i in range(3)}}
    assert first_rung(earlier) == "STOP"  # worse than the earlier trials at that rung


def _tagtune(*args) -> list[str]:
    return [sys.executable, "-m", "tagtune", *map(str, args)]


@pytest.mark.cluster
def test_interrupted_extend_resumes_exactly(base_study, tmp_path):
    d = _copy(base_study, tmp_path)
    before = _runs(d)
    journal = d / "mlflow-journal.jsonl"
    offset = len(journal.read_bytes())
    env = base_env(TUNE_GLOBAL_CHECKPOINT_S="0")
    driver = subprocess.Popen(_tagtune("study", "extend", d, "--methods", "b0", "--trials", "4",
                                       "--quiet"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    try:  # killed once the round's search has ended a trial: mid-round
        while time.monotonic() < deadline and driver.poll() is None and \
                b'"op": "end"' not in journal.read_bytes()[offset:]:
            time.sleep(0.05)
    finally:
        _kill_tree(driver)
    assert read_rounds(d)[-1]["ended"] is None, "the kill must land mid-round"
    refused = invoke("study", "extend", d, "--replicates", "3")
    assert refused.exit_code == 2 and "resume it first" in refused.output
    done = subprocess.run(_tagtune("study", "resume", d, "--quiet"), env=base_env(),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _runs(d)
    _check_grown(before, after, {"b1@0.00", "b1@0.00".replace("b1", "b0")})
    assert Counter(r.data.tags["cell"] for r in _trial_runs(after)
                   if r.data.tags["phase"] == "search") == {"b1@0.00": 4, "b0@0.00": 4}
    assert _phases(after)["replicate"] == 4
    summary = json.loads((d / "summary.json").read_text())
    assert {c: v["optuna"]["handed_out"] for c, v in summary["cells"].items()} == {
        "b1@0.00": 4, "b0@0.00": 4}
    assert read_rounds(d)[-1]["ended"]
