"""``tagtune analyze`` succeeding through the CLI on a copy of the tiny study: what it prints,
the files it writes, ``--metric``, and ``--mlflow-uri`` against a real MLflow server."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tagtune.analysis.export import COMBINED, cell_filename
from tests.conftest import TINY_STUDY, invoke
from tests.launch.processes import MlflowServer

pytestmark = pytest.mark.timeout(300)
CELLS = [f"{m}@{p:.2f}" for m in TINY_STUDY["methods"] for p in TINY_STUDY["missing"]]


@pytest.fixture
def study_dir(tiny_study, tmp_path):
    _, result = tiny_study
    return shutil.copytree(result.study_dir, tmp_path / result.study_dir.name)


def printed(stdout: str) -> dict[str, str]:
    """``name:  value`` lines of the summary, by name."""
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in stdout.splitlines()
            if not line.startswith("- ") and ":" in line}


def test_analyze_prints_where_everything_is(study_dir, tmp_path):
    out = tmp_path / "out"
    r = invoke("analyze", study_dir, "--out", out)
    assert r.exit_code == 0, r.output
    shown = printed(r.stdout)
    assert shown["report"] == str(out / "report.html") and (out / "report.html").is_file()
    assert str(out / "trials.csv") in shown["table"]
    assert shown["metrics"] == f"{out / 'metrics.csv'} (F1 at 0.5, F1 with tuned thresholds, mAP)"
    pngs = sorted((out / "figures").glob("*.png"))
    assert shown["figures"] == f"{out / 'figures'} ({len(pngs)})" and len(pngs) >= 4
    assert shown["configs"] == str(out / "best")
    assert sorted(p.name for p in (out / "best").iterdir()) == sorted(
        [cell_filename(c) for c in CELLS] + [COMBINED])
    assert shown["tracking"].startswith("MLflow run ") and f"sqlite:///{study_dir}" in shown["tracking"]
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == len(CELLS) * (TINY_STUDY["trials"] + TINY_STUDY["replicates"])
    # The answer first: a title naming the metric, a header, one row per proportion, then the
    # conclusions it rests on (their last line says where the intervals are), then the files.
    head = r.stdout.split("\nreport:", 1)[0].strip().splitlines()
    answer = [line for line in head if line and not line.startswith("- ")]
    assert answer[0].startswith("the answer, F1 macro (test, full truth) on the replicates"), answer
    assert answer[1].split()[:2] == ["removed", "best"] and "margin over B1" in answer[1]
    assert [row.split()[0] for row in answer[2:]] == [f"{100 * p:.0f}%" for p in TINY_STUDY["missing"]]
    said = [line for line in head if line.startswith("- ")]
    assert said and said[-1].endswith("their intervals are in the report's paired comparisons."), said
    assert not [line for line in r.stdout.split("\nreport:", 1)[1].splitlines() if line.startswith("- ")]
    assert "missing" not in shown  # a finished study: nothing reported missing


def test_metric_flag_sets_the_headline(tiny_study, study_dir, tmp_path):
    _, result = tiny_study
    metric = "test/auprc_macro"
    r = invoke("analyze", study_dir, "--out", tmp_path / "out", "--metric", metric, "--no-mlflow")
    assert r.exit_code == 0, r.output
    assert printed(r.stdout)["tracking"] == "MLflow logging turned off"
    means = pd.DataFrame(result.replicates).groupby(["missing", "method"])[metric].mean()
    # The answer table's rows: after its title and header, one per proportion (then the gain lines).
    head = [x for x in r.stdout.split("\nreport:", 1)[0].strip().splitlines() if x and not x.startswith("- ")]
    assert head[1].split()[:2] == ["removed", "best"], head
    rows = head[2:2 + len(TINY_STUDY["missing"])]
    for p, row in zip(TINY_STUDY["missing"], rows, strict=True):
        method = means[p].idxmax()  # best on the metric asked for
        assert row.split()[:3] == [f"{100 * p:.0f}%", method.upper(), f"{means[p][method]:.3f}"], row
    assert "AUPRC macro (test, observed labels)" in (tmp_path / "out" / "report.html").read_text()


def test_mlflow_uri_of_a_real_server_receives_the_analysis(tiny_study, study_dir, tmp_path):
    settings, _ = tiny_study
    server = MlflowServer(tmp_path / "server" / "mlflow.db")
    server.db.parent.mkdir()
    try:
        server.start()
        r = invoke("analyze", study_dir, "--out", tmp_path / "out", "--mlflow-uri", server.uri)
        assert r.exit_code == 0, r.output
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name(settings.name)
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # made here: the UI's kind
        (run,) = client.search_runs([exp.experiment_id], filter_string="tags.phase = 'analysis'")
        assert printed(r.stdout)["tracking"].startswith(f"MLflow run {run.info.run_id} ")
        assert server.uri in printed(r.stdout)["tracking"]
        figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert figures == {f"figures/{p.name}" for p in (tmp_path / "out" / "figures").glob("*.png")}
        assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        server.stop()
    # The study's own store got no analysis run: the flag chose where it went.
    own = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = own.get_experiment_by_name(settings.name)
    assert own.search_runs([exp.experiment_id], filter_string="tags.phase = 'analysis'") == []
