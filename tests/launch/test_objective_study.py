"""A tiny study end to end with each objective: trials chosen by it, the paper point replicated on
the best config's seeds, the gain in summary.json and in the analysis; old studies read as
val/loss; extend refuses a change of objective."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml

from tagtune.launch.trainable import EARLIER
from tagtune.study import objective
from tests.conftest import TINY_TRAIN, invoke

STUDY = dict(methods=("b1",), missing=(0.0,), trials=4, replicates=2, epochs=3, grace_period=3,
             checkpoint_every=3)


def _last(trial_dir) -> dict:
    return json.loads((trial_dir / "result.json").read_text().splitlines()[-1])


@pytest.fixture(scope="module", params=objective.OBJECTIVES)
def study(request, ray_session, tiny_dataset, tmp_path_factory):
    from tagtune.launch.study import run_study
    from tagtune.study.data import save
    from tagtune.study.folder import StudySettings

    root = tmp_path_factory.mktemp("objective")
    path = save(tiny_dataset, root / "tiny.h5")
    settings = StudySettings(data=str(path), name="obj", storage=str(root), objective=request.param,
                             train=TINY_TRAIN, **STUDY)
    return settings, run_study(settings, verbose=0)


def test_trials_report_and_are_chosen_by_the_objective(study):
    settings, result = study
    key, name = objective.score_key(settings.objective), settings.objective
    reports = {p.parent.name.rsplit("_", 1)[-1]: _last(p.parent)
               for p in (result.study_dir / "search").glob("*/result.json")}
    assert len(reports) == STUDY["trials"] and all(r["complete"] for r in reports.values())
    # Each trial's reported score is its selected epoch's objective: the best over its epochs.
    for trial_id, last in reports.items():
        lines = (next((result.study_dir / "search").glob(f"*_{trial_id}")) / "result.json").read_text()
        rows = [json.loads(line) for line in lines.splitlines()]
        # An epoch between two decisions rides in the next report (trainable.EARLIER).
        values = [e[name] for row in rows for e in [*row.get(EARLIER, []), row]]
        assert last[key] == min(values, key=lambda v: objective.loss(v, name))
    best = json.loads((result.study_dir / "best.json").read_text())["b1@0.00"]
    chosen = min(reports, key=lambda t: objective.loss(reports[t][key], name))
    assert best["trial_id"] == chosen and best["metric"] == key and best["value"] == reports[chosen][key]
    assert yaml.safe_load((result.study_dir / "study.yaml").read_text())["objective"] == name
    # The trial configs carry the objective: every fit selected its epochs by it.
    assert best["config"]["objective"] == name


def test_the_paper_point_is_replicated_on_the_best_configs_seeds(study):
    settings, result = study
    summary = json.loads((result.study_dir / "summary.json").read_text())
    best = json.loads((result.study_dir / "best.json").read_text())["b1@0.00"]
    seeds = sorted(r["seed"] for r in summary["replicates"])
    assert seeds == [settings.seed + r for r in range(STUDY["replicates"])]
    assert all("point" not in r and "test/f1_macro_tuned" in r for r in summary["replicates"])
    g = summary["gain"]["cells"]["b1@0.00"]
    assert summary["gain"]["metric"] == "test_full/f1_macro" and summary["objective"] == settings.objective
    if best["trial_id"] == best["paper_trial_id"]:  # the search kept the paper's point
        assert summary["paper_point"] == [] and g["verdict"] == "paper point kept"
    else:
        paper = {r["seed"]: r for r in summary["paper_point"]}
        assert sorted(paper) == seeds and all(r["point"] == "paper" for r in paper.values())
        ours = {r["seed"]: r for r in summary["replicates"]}
        d = [ours[s]["test_full/f1_macro"] - paper[s]["test_full/f1_macro"] for s in seeds]
        assert g["n"] == 2 and g["gain"] == pytest.approx(sum(d) / 2)
        assert g["low"] <= g["gain"] <= g["high"] or math.isclose(d[0], d[1])
        # The paper point's config is the cell's first trial's (the paper's settings), its seeds
        # the replicates'.
        first = next(c for c in _params(result.study_dir / "search") if c["optuna_trial"] == 0)
        ran = [c for c in _params(result.study_dir / "replicate") if c.get("point") == "paper"]
        own = ("phase", "replicate", "seed", "point", "reused_checkpoint")
        assert sorted(c["seed"] for c in ran) == seeds
        assert all({k: v for k, v in c.items() if k not in own}
                   == {k: v for k, v in first.items() if k not in own} for c in ran)


def _params(phase_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in phase_dir.glob("*/params.json")]


def test_analyze_states_the_gain_and_keeps_paper_replicates_apart(study, tmp_path):
    from tagtune.analysis import analyze

    settings, result = study
    r = analyze(result.study_dir, out=tmp_path / "a", log_mlflow=False)
    reps = r.table[r.table["phase"] == "replicate"]
    assert len(reps) == STUDY["replicates"]  # the paper point's replicates are not the best's
    assert set(r.gain) == {"b1@0.00"}
    text = r.answer_text()
    assert "0% removed: search" in text and "paper" in text
    assert "Does the search pay?" in r.report.read_text()


def test_an_old_study_reads_as_val_loss_and_extend_refuses_another_objective(study, tmp_path):
    from tagtune.study.folder import load_study, read_study

    settings, result = study
    d = tmp_path / "studies" / result.study_dir.name
    shutil.copytree(result.study_dir, d, symlinks=True)
    saved = yaml.safe_load((d / "study.yaml").read_text())
    del saved["objective"]  # as written before the setting existed
    (d / "study.yaml").write_text(yaml.safe_dump(saved))
    assert load_study(d).objective == read_study(d).objective == "val/loss"
    other = next(o for o in objective.OBJECTIVES if o != "val/loss")
    config = tmp_path / "grow.yaml"
    config.write_text(yaml.safe_dump({"objective": other, "trials": 5}))
    out = invoke("study", "extend", d, "--config", config, "--quiet")
    assert out.exit_code == 2
    assert out.stderr.strip() == (f"error: extend: objective: {other!r} differs from the study's 'val/loss': "
                                  "old and new trials would not be comparable; run a new study")
    assert "objective" not in yaml.safe_load((d / "study.yaml").read_text())


def test_unknown_objective_is_one_line_exit_2(data_file, tmp_path):
    out = invoke("study", "--data", data_file, "--storage", tmp_path, "--objective", "val/f1")
    assert out.exit_code == 2 and "objective" in out.stderr and "\n" not in out.stderr.strip()
    out = invoke("train", "--data", data_file, "--out", tmp_path / "r", "--method", "b1",
                 "--objective", "val/f1")
    assert out.exit_code == 2 and "objective" in out.stderr and "\n" not in out.stderr.strip()
