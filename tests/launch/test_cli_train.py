"""``tagtune train`` end to end on a tiny generic file, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from tagtune.launch.cli_train import resolve_config
from tagtune.study.config import TrainConfig, from_dict, to_dict
from tests.conftest import invoke

TINY = ["--epochs", "2", "--batch-size", "16", "--no-progress"]


@pytest.fixture
def small_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("method: mt\nlr: 0.002\nbeta: 1.0\nmodel:\n  layers: 1\n  hidden: 8\n")
    return path


@pytest.mark.parametrize("method", ["b0", "b1", "le", "mt"])
def test_train_writes_every_output(data_file, tmp_path, small_yaml, tiny_dataset, method):
    out = tmp_path / "run"
    r = invoke("train", "--data", data_file, "--config", small_yaml, "--method", method, *TINY,
               "--out", out)
    assert r.exit_code == 0, r.output
    assert "test/f1_macro" in r.output
    cfg = from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text()))
    assert (cfg.method, cfg.lr, cfg.epochs, cfg.model.hidden) == (method, 0.002, 2, 8)
    history = json.loads((out / "history.json").read_text())
    assert len(history) == (4 if method == "le" else 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val/loss", "test/f1_macro", "test/auprc_micro", "test_full/map"} <= set(metrics)
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["config"]["method"] == method and "cla.weight" in saved["state_dict"]
    with np.load(out / "predictions.npz") as z:
        assert z["keys"].tolist() == tiny_dataset.test.keys.tolist()
        assert z["scores"].shape == (12, 3) and ((z["scores"] >= 0) & (z["scores"] <= 1)).all()


def test_train_with_progress_bar(data_file, tmp_path):
    r = invoke("train", "--data", data_file, "--method", "b1", "--epochs", "1", "--out",
               tmp_path / "run", "--batch-size", "16")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_layers_flags_over_yaml_over_preset(small_yaml):
    cfg = resolve_config("sonyc", small_yaml, method=None, lr=0.5, gamma=None, layers=2,
                         hidden=None)
    assert cfg.params.alpha == 0.99 and "gamma" not in to_dict(cfg)  # preset; MT's parameters only
    assert resolve_config("sonyc", small_yaml, method="le").params.gamma == 95.0  # preset
    assert cfg.method == "mt" and cfg.params.beta == 1.0 and cfg.model.hidden == 8  # yaml over preset
    assert cfg.model.dropout == 0.6  # the preset's model fields the yaml left alone
    assert cfg.lr == 0.5 and cfg.model.layers == 2  # flags over yaml
    assert resolve_config(None, None, method="le").params.gamma == TrainConfig(method="le").params.gamma


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "le", "--gamma", "101"], "gamma"),
    (["--method", "le", "--gamma", "-1"], "gamma"),
    (["--method", "mt", "--alpha", "1"], "alpha"),
    (["--method", "mt", "--beta", "-0.5"], "beta"),
    (["--method", "b1", "--lr", "0"], "lr"),
    (["--method", "b1", "--dropout", "1"], "--dropout: must be in"),  # the flag, not model.dropout
    (["--method", "b2"], "unknown method"),
    (["--method", "b1", "--preset", "audioset"], "unknown preset"),
    ([], "method: not given"),
    (["--method", "b1", "--config", "YAML:epochz: 3"], "epochz: unknown key"),
    (["--method", "b1", "--config", "YAML:lr: [1, 2"], "does not parse"),
    (["--method", "b1", "--config", "YAML:lr: fast"], "lr: expected a number"),
    (["--method", "b1", "--data", "nowhere.h5"], "no such file"),
])
def test_bad_values_exit_2_with_one_line(data_file, tmp_path, args, message):
    args = list(args)
    for i, a in enumerate(args):
        if a.startswith("YAML:"):
            path = tmp_path / "bad.yaml"
            path.write_text(a[5:] + "\n")
            args[i] = path
    if "--data" not in args:
        args += ["--data", data_file]
    r = invoke("train", *args, "--out", tmp_path / "run", "--no-progress")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_out_that_is_a_file_exit_2_before_training(data_file, tmp_path, monkeypatch):
    blocker = tmp_path / "run"
    blocker.write_text("a file, not a directory")
    monkeypatch.setattr("tagtune.study.fit.run.fit", lambda *a, **k: pytest.fail("trained anyway"))
    r = invoke("train", "--method", "b1", "--data", data_file, "--out", blocker, "--no-progress")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "out: exists and is not a directory" in lines[0], r.output
