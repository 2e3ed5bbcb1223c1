"""The whole analysis path on the tiny study of tests/conftest.py: table, figures, MLflow run,
report, exported configs that reproduce a replicate, a partial study, a non-study directory.

Every test analyses a copy of the study: the session's study stays as the study tests expect
it (no extra MLflow run in its store).
"""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tagtune.analysis import analyze
from tagtune.analysis.export import COMBINED, cell_filename
from tagtune.study.config import applies
from tagtune.study.fit.teachers import TEACHER_LR
from tagtune.study.objective import score_key
from tests.conftest import TINY_STUDY, invoke

METHODS, MISSING = TINY_STUDY["methods"], TINY_STUDY["missing"]
CELLS = [f"{m}@{p:.2f}" for m in METHODS for p in MISSING]
METRIC = "test_full/f1_macro"  # the tiny dataset has full truth


def copy_study(tiny_study, dest):
    _, result = tiny_study
    return shutil.copytree(result.study_dir, dest)


@pytest.fixture(scope="module")
def analysed(tiny_study, tmp_path_factory):
    import ray

    study_dir = copy_study(tiny_study, tmp_path_factory.mktemp("analysis") / "tiny")
    init = ray.init
    ray.init = lambda *a, **k: pytest.fail("the analysis started Ray")
    try:
        return study_dir, analyze(study_dir)
    finally:
        ray.init = init


def test_table_has_one_row_per_trial_and_replicate(tiny_study, analysed):
    settings, study = tiny_study
    _, r = analysed
    t = r.table
    search, reps = t[t.phase == "search"], t[t.phase == "replicate"]
    assert len(search) == len(CELLS) * TINY_STUDY["trials"]
    assert len(reps) == len(CELLS) * TINY_STUDY["replicates"]
    assert t["trial_id"].is_unique
    for col in ("study", "cell", "method", "proportion", "phase", "seed", "epochs_run",
                "stopped_early", "lr", "gamma", "alpha", "beta", "model.hidden", "val/loss",
                score_key(settings.objective), METRIC, "test/f1_macro", "test/auprc_micro"):
        assert col in t.columns, col
    assert set(t["study"]) == {settings.name} and set(search["cell"]) == set(CELLS)
    # Per cell, the status counts agree with the study's own summary.
    for cell, counts in study.summary["cells"].items():
        rows = search[search.cell == cell]
        assert (rows.status == "complete").sum() == counts["completed"]
        assert rows.stopped_early.sum() == counts["stopped_early"]
    assert search[search.stopped_early]["epochs_run"].lt(settings.epochs * 2).all()
    # gamma only for LE, alpha/beta only for MT; the replicate metrics are the study's.
    assert t[t.method != "le"]["gamma"].isna().all() and t[t.method == "le"]["gamma"].notna().all()
    assert t[t.method != "mt"]["beta"].isna().all()
    for row in study.replicates:
        mine = reps[(reps.cell == row["cell"]) & (reps.seed == row["seed"])]
        assert mine[METRIC].item() == pytest.approx(row[METRIC], abs=1e-12)
    on_disk = r.table_files[0]
    assert on_disk.name == "trials.csv" and len(on_disk.read_text().splitlines()) == len(t) + 1


def test_figures_are_non_empty_pngs(analysed):
    _, r = analysed
    assert {"replicates", "sensitivity", "hyperparameters", "history"} <= set(r.figures)
    for path in r.figures.values():
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5_000
    # 2 trials per cell: too few for importance, and B0/B1 search only lr; the report says so.
    assert "importance" in r.skipped_figures and "only lr searched" in r.skipped_figures["importance"]


def test_report_is_self_contained_and_names_every_cell(analysed):
    _, r = analysed
    html = r.report.read_text()
    for cell in CELLS:
        assert cell in html
    assert html.count("data:image/png;base64,") == len(r.figures)
    assert not re.search(r'src="(?!data:)', html)  # nothing to fetch from elsewhere
    assert "Incomplete study" not in html and r.missing == []
    assert r.summary["n"].tolist() == [2] * len(CELLS)
    for line in r.conclusions:
        assert line in htmllib.unescape(html)
    # It opens with the answer: one row per proportion, the best mean's method, before any detail.
    assert html.index("<h2>The answer</h2>") < html.index("<table") < html.index("<h2>", html.index(
        "<h2>The answer</h2>") + 1)
    best = r.summary.loc[r.summary.groupby("proportion")["mean"].idxmax()]
    assert r.answer["best"].tolist() == [m.upper() for m in best["method"]]
    assert r.answer["removed"].tolist() == [f"{100 * p:.0f}%" for p in MISSING]
    assert "Holm" in html
    # 2 replicates a cell: a margin and its interval, but no verdict (5 seeds needed).
    assert {c.split(" (")[0] for c in r.answer["clear"]} <= {"too few seeds", "—"}
    for m in ("LE", "MT"):
        assert any(s.startswith((f"{m} beats B1", f"{m} vs B1", f"{m} loses to B1"))
                   for s in html.split("<li>"))


def test_analysis_run_in_mlflow_is_reused(analysed, tiny_study):
    study_dir, first = analysed
    again = analyze(study_dir, log_mlflow=True)
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tiny_study[0].name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.phase = 'analysis'")
    assert len(runs) == 1 and runs[0].info.run_id == first.mlflow_run_id == again.mlflow_run_id
    assert runs[0].info.run_name == "analysis"
    names = {a.path for a in client.list_artifacts(first.mlflow_run_id, "figures")}
    assert {f"figures/{p.name}" for p in first.figures.values()} <= names
    assert "report.html" in {a.path for a in client.list_artifacts(first.mlflow_run_id)}


def test_f1_at_half_tuned_f1_and_map_side_by_side_in_report_csv_and_mlflow(analysed, tiny_study):
    """Issue 33: the tuned F1 beside F1 at 0.5 and mAP, per method x proportion, in the report and
    metrics.csv (and that file in the analysis run); every MLflow run carries it (search trials
    their validation figure per epoch, replicates and the cells' parent runs the test ones)."""
    study_dir, r = analysed
    on_disk = pd.read_csv(r.side_by_side_file)
    assert r.side_by_side_file.name == "metrics.csv" and len(on_disk) == len(CELLS)
    for m in ("f1_macro", "f1_macro_tuned", "auprc_macro"):  # the tiny data has the complete truth
        assert f"test_full/{m}" in on_disk and on_disk[f"test_full/{m}"].notna().all()
    reps = r.table[r.table.phase == "replicate"]
    b1 = on_disk[(on_disk.method == "b1") & (on_disk.proportion == MISSING[-1])].iloc[0]
    mine = reps[(reps.method == "b1") & (reps.proportion == MISSING[-1])]
    assert b1["test_full/f1_macro_tuned"] == pytest.approx(mine["test_full/f1_macro_tuned"].mean())
    html = htmllib.unescape(r.report.read_text())
    assert "<h2>F1 at 0.5, F1 with tuned thresholds and mAP</h2>" in html
    assert "can rank well yet calibrate badly" in html
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tiny_study[0].name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    phases = {}
    for run in runs:
        phases.setdefault(run.data.tags.get("phase"), []).append(run)
    assert all("val/f1_macro_tuned" in x.data.metrics for x in phases["search"])
    assert all({"test_full/f1_macro_tuned", "test/f1_macro_tuned"} <= set(x.data.metrics)
               for x in phases["replicate"])
    parents = [x for x in runs if x.info.run_name in CELLS]
    assert len(parents) == len(CELLS)
    assert all("test_full/f1_macro_tuned" in x.data.metrics for x in parents)
    analysis = next(x for x in phases["analysis"])
    assert "metrics.csv" in {a.path for a in client.list_artifacts(analysis.info.run_id)}


def test_exported_config_reproduces_its_replicate(tiny_study, analysed, tmp_path):
    settings, _ = tiny_study
    study_dir, r = analysed
    out = tmp_path / "best"
    res = invoke("export-best", study_dir, "--out", out)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [cell_filename(c) for c in CELLS] + [COMBINED])
    combined = yaml.safe_load((out / COMBINED).read_text())
    assert set(combined["cells"]) == set(CELLS)
    for cell in CELLS:  # LE's shared teacher: its lr travels in LE's configs (the others hold none)
        cfg = combined["cells"][cell]["config"]
        if applies(cfg["method"], "le_teacher_lr"):
            assert cfg["le_teacher_lr"] == (TEACHER_LR if settings.share_le_teacher else None)
        else:
            assert "le_teacher_lr" not in cfg
    seed = settings.seed + 1  # the second replicate: not the file's own seed
    for cell in ("mt@0.40", "le@0.40"):  # LE: stage 1 shared in the study, trained here
        row = r.table[(r.table.phase == "replicate") & (r.table.cell == cell) & (r.table.seed == seed)]
        run = tmp_path / cell_filename(cell)
        res = invoke("train", "--config", out / cell_filename(cell), "--data", settings.data,
                     "--out", run, "--seed", seed, "--no-progress")
        assert res.exit_code == 0, res.output
        metrics = json.loads((run / "metrics.json").read_text())
        for key in (METRIC, "test/f1_macro", "test/auprc_macro", "test/loss"):
            assert metrics[key] == pytest.approx(row[key].item(), abs=1e-6), (cell, key)


def set_tune_status(phase_dir, trial_id, status):
    """Edit Tune's newest experiment snapshot as if the driver died with the trial running."""
    path = max(phase_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    state = json.loads(path.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] == trial_id:
            entry[0] = json.dumps({**trial, "status": status})
    path.write_text(json.dumps(state))


def test_partial_study_is_analysed_and_says_what_is_missing(tiny_study, tmp_path):
    study_dir = copy_study(tiny_study, tmp_path / "tiny")
    shutil.rmtree(study_dir / "replicate")
    (study_dir / "summary.json").unlink()
    best = json.loads((study_dir / "best.json").read_text())
    (study_dir / "best.json").unlink()  # still searching: best configs come from the table
    # One search trial of mt@0.00 killed after its first report: no end event, one result.
    trial_dir = next((study_dir / "search").glob("mt_0.00_*"))
    lines = (trial_dir / "result.json").read_text().splitlines()
    (trial_dir / "result.json").write_text(lines[0] + "\n")
    trial_id = json.loads(lines[0])["trial_id"]
    journal = study_dir / "mlflow-journal.jsonl"
    journal.write_text("".join(line + "\n" for line in journal.read_text().splitlines()
                               if not ('"end"' in line and trial_id in line)))
    set_tune_status(study_dir / "search", trial_id, "RUNNING")
    # A trial directory Tune never recorded (driver killed before its snapshot): not counted.
    shutil.copytree(trial_dir, study_dir / "search" / "mt_0.00_0rphan00")

    r = analyze(study_dir, out=tmp_path / "out", log_mlflow=False)
    assert r.table[r.table.trial_id == trial_id]["status"].item() == "unfinished"
    assert "0rphan00" not in set(r.table.trial_id)
    assert (r.table.phase == "search").sum() == len(CELLS) * TINY_STUDY["trials"]
    assert any("replicate/ is missing" in m for m in r.missing)
    assert any(m.startswith("mt@0.00: 1 trial not finished") for m in r.missing)
    assert sum("0 of 2 replicates finished" in m for m in r.missing) == len(CELLS)
    assert r.conclusions == [] and "replicates, sensitivity" in r.skipped_figures
    for cell in CELLS:
        if cell != "mt@0.00":  # the trial cut short there may have been its best
            text = (r.best_dir / cell_filename(cell)).read_text()
            assert f"search trial {best[cell]['trial_id']}," in text
    assert {"hyperparameters", "history"} <= set(r.figures)
    html = r.report.read_text()
    assert "Incomplete study" in html and "1 trial not finished" in html
    assert "No replicate has finished" in html
    for cell in CELLS:
        assert cell in html


def test_not_a_study_is_one_line_and_exit_2(tmp_path):
    for args in (("analyze", tmp_path), ("export-best", tmp_path, "--out", tmp_path / "x")):
        res = invoke(*args)
        assert res.exit_code == 2
        assert res.stderr.startswith("error: ") and "not a study directory" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_unknown_metric_is_one_line_and_exit_2(analysed, tmp_path):
    study_dir, _ = analysed
    res = invoke("analyze", study_dir, "--out", tmp_path, "--metric", "test/nope", "--no-mlflow")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "test/nope" in res.stderr and "test/auprc_macro" in res.stderr


def test_out_that_is_a_file_is_one_line_and_exit_2(analysed, tmp_path):
    study_dir, _ = analysed
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    for args in (("analyze", study_dir, "--out", blocker, "--no-mlflow"),
                 ("export-best", study_dir, "--out", blocker)):
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert res.stderr.strip() == f"error: {blocker}: out: exists and is not a directory"
    assert blocker.read_text() == "a file"
