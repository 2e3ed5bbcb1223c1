"""``tagtune train`` on sonyc-like data writes the DCASE challenge's metrics; ``analyze``
headlines them on a SONYC-UST study and accepts them as ``--metric``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from tagtune.analysis.table import headline_metric
from tagtune.launch.cli import app
from tagtune.study.data import save
from tagtune.study.data.synth import synthesize
from tagtune.study.eval.dcase import NAMES


def test_train_on_sonyc_like_data_writes_dcase_metrics(tmp_path):
    data = save(synthesize("sonyc-like", seed=0, n_clips=80), tmp_path / "sonyc.h5")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  layers: 1\n  hidden: 8\n")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--config", str(cfg), "--method",
                                 "b1", "--epochs", "1", "--batch-size", "16", "--no-progress",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    for prefix in ("val", "test", "test_full"):
        for name in NAMES:
            assert 0 <= metrics[f"{prefix}/{name}"] <= 1, (prefix, name)
    assert "test/auprc_macro" in metrics  # scikit-learn's family stays beside it
    history = json.loads((out / "history.json").read_text())
    assert "val/dcase_fine_macro_auprc" in history[-1]


def test_openmic_like_data_has_no_dcase_metrics(tmp_path):
    data = save(synthesize("openmic-like", seed=0, n_clips=60), tmp_path / "o.h5")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--method", "b0", "--epochs", "1",
                                 "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not any("dcase" in k for k in json.loads((out / "metrics.json").read_text()))


def _reps(**columns) -> pd.DataFrame:
    return pd.DataFrame({"phase": ["replicate"] * 2, "method": ["b1", "mt"], **columns})


def test_a_sonyc_study_headlines_the_dcase_macro_auprc():
    both = {"test/f1_macro": [0.5, 0.6], "test_full/f1_macro": [0.5, 0.6]}
    dcase = {"test/dcase_fine_macro_auprc": [0.4, 0.5],
             "test_full/dcase_fine_macro_auprc": [0.45, 0.55]}
    assert headline_metric(_reps(**both, **dcase)) == "test_full/dcase_fine_macro_auprc"
    real = {"test/f1_macro": [0.5, 0.6], "test/dcase_fine_macro_auprc": [0.4, 0.5]}
    assert headline_metric(_reps(**real)) == "test/dcase_fine_macro_auprc"
    coarse = {"test/f1_macro": [0.5, 0.6], "test/dcase_coarse_macro_auprc": [0.4, 0.5]}
    assert headline_metric(_reps(**coarse)) == "test/dcase_coarse_macro_auprc"
    assert headline_metric(_reps(**both)) == "test_full/f1_macro"  # not SONYC-UST: unchanged
    picked = headline_metric(_reps(**real), "test/dcase_fine_macro_auprc")
    assert picked == "test/dcase_fine_macro_auprc"
    with pytest.raises(ValueError, match="'test/dcase_fine_micro_f1' not in the results"):
        headline_metric(_reps(**both), "test/dcase_fine_micro_f1")


def test_dcase_metrics_have_names_in_words():
    from tagtune.analysis.stats import metric_label

    assert metric_label("test/dcase_fine_macro_auprc") == "DCASE fine macro AUPRC (test, observed labels)"
    assert metric_label("test_full/dcase_coarse_micro_f1") == "DCASE coarse micro F1 (test, full truth)"
