"""The methods beyond the paper through the real entry points: ``tagtune train``, ``tagtune
study`` (a tiny study with two of them: budgets, MLflow params, the analysis' names)."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tagtune.analysis.figures import COLORS, _methods
from tagtune.analysis.stats import method_name
from tagtune.study.config import METHOD_PARAMS, METHODS, applies
from tagtune.study.data import positives_only, save
from tests.conftest import TINY_TRAIN, invoke
from tests.launch.test_preflight import refused

NEW = ("lemt", "llr", "hill", "splc", "pbce", "wan", "epr")


@pytest.mark.parametrize("method", NEW)
def test_train_runs_each_new_method(data_file, tmp_path, method):
    config = tmp_path / "cfg.yaml"
    config.write_text("model:\n  layers: 1\n  hidden: 8\ndelta_rel: 0.1\nsplc_tau: 0.3\n")
    out = tmp_path / "run"
    r = invoke("train", "--data", data_file, "--method", method, "--config", config, "--epochs", "2",
               "--batch-size", "16", "--no-progress", "--out", out)
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # the file's delta_rel where the method reads it (LL-R), and nowhere else: a config holds its own
    assert saved["method"] == method and saved.get("delta_rel", 0.1) == 0.1
    assert ("delta_rel" in saved) == applies(method, "delta_rel")
    history = json.loads((out / "history.json").read_text())
    assert len(history) == (4 if method == "lemt" else 2)
    assert "test/f1_macro" in json.loads((out / "metrics.json").read_text())


def test_methods_that_need_negatives_are_refused_on_positives_only_data(tiny_dataset, tmp_path):
    path = save(positives_only(tiny_dataset), tmp_path / "positives.h5")
    r = invoke("train", "--data", path, "--method", "pbce", "--epochs", "1", "--no-progress",
               "--out", tmp_path / "run")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "method: pbce need observed negatives" in lines[0], r.output
    line = refused(["--data", path, "--storage", tmp_path, "--methods", "wan,epr,pbce,llr", "--missing",
                    "0", "--trials", "1", "--replicates", "0", "--epochs", "1", "--grace-period", "1",
                    "--quiet"], "method")
    assert "pbce need observed negatives" in line and "wan" in line.split("supports")[1]
    assert not (tmp_path / "study").exists()


def test_the_analysis_names_and_colours_every_method():
    assert set(COLORS) == set(METHODS) and len(set(COLORS.values())) == len(METHODS)
    assert [method_name(m) for m in ("b1", "lemt", "llr", "splc")] == ["B1", "LE+MT", "LL-R", "SPLC"]
    import pandas as pd

    df = pd.DataFrame({"method": ["epr", "b1", "lemt", "b0"]})
    assert _methods(df) == ["b0", "b1", "lemt", "epr"]


@pytest.fixture(scope="module")
def beyond_study(ray_session, tiny_dataset, tmp_path_factory):
    """``tagtune study --methods lemt,llr``: 1 proportion, 2 trials each, 1 replicate, 2 epochs."""
    root = tmp_path_factory.mktemp("beyond")
    path = save(tiny_dataset, root / "tiny.h5")
    config = root / "study.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(path), "name": "beyond", "storage": str(root / "studies"),
        "missing": [0.4], "trials": 2, "replicates": 1, "epochs": 2, "grace_period": 2,
        "checkpoint_every": 1,
        "train": TINY_TRAIN}))
    r = invoke("study", "--config", config, "--methods", "lemt,llr", "--quiet")
    return root / "studies" / "beyond", r


def test_a_study_runs_the_new_methods_and_logs_their_own_params(beyond_study):
    study_dir, r = beyond_study
    assert r.exit_code == 0, r.output
    summary = json.loads((study_dir / "summary.json").read_text())
    assert {c: (v["trials"], v["failed"]) for c, v in summary["cells"].items()} == {
        "lemt@0.40": (2, 0), "llr@0.40": (2, 0)}
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = [x for x in client.search_runs([experiment.experiment_id], max_results=100)
            if "tagtune.trial_id" in x.data.tags]
    assert len(runs) == 2 * 2 + 2  # trials, replicates
    method_specific = {n for names in METHOD_PARAMS.values() for n in names}
    for run in runs:
        method = run.data.params["method"]
        assert method_specific & set(run.data.params) == set(METHOD_PARAMS[method]), method
        # LE+MT: two stages on one epoch counter; the budget counts the student's epochs only
        assert run.data.metrics["epoch"] == (4 if method == "lemt" else 2)
        assert run.data.metrics["budget"] == 2
