"""``tagtune train``'s flags through the real CLI: each reaches the saved config.yaml with its own
value, the layers override one another (defaults < preset < config < flag), and the saved
config.yaml reproduces the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.study.config import TrainConfig


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """--threads sets torch's thread count in this process: put it back for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def train(*args) -> dict:
    """Run ``tagtune train``; the config.yaml it saved."""
    args = [str(a) for a in args]
    r = CliRunner().invoke(app, ["train", *args, "--no-progress"])
    assert r.exit_code == 0, r.output
    return yaml.safe_load((Path(args[args.index("--out") + 1]) / "config.yaml").read_text())


# Every flag, each with a value that no other flag, preset or default has: a flag delivered
# to the wrong field (layers <-> hidden, patience <-> rampup_epochs, ...) cannot go unseen.
FLAGS = {"lr": 0.004, "epochs": 1, "batch_size": 13, "gamma": 42.0, "alpha": 0.95, "beta": 2.5,
         "rampup_epochs": 6, "patience": 4, "missing": 0.3, "seed": 5, "threads": 3}
MODEL_FLAGS = {"layers": 2, "hidden": 7, "dropout": 0.15}


def test_every_flag_reaches_config_yaml_with_its_own_value(data_file, tmp_path):
    values = {**FLAGS, **MODEL_FLAGS}
    assert len(set(values.values())) == len(values)  # distinct, so a swap shows
    args = [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", v)]
    # LE+MT: the method that reads gamma, alpha, beta and rampup_epochs (a config holds its own)
    saved = train("--data", data_file, "--method", "lemt", *args, "--out", tmp_path / "run")
    assert saved["method"] == "lemt"
    assert {k: saved[k] for k in FLAGS} == FLAGS
    assert {k: saved["model"][k] for k in MODEL_FLAGS} == MODEL_FLAGS
    # The run trained with them: the saved model's layers are 7 wide, none the default 128.
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    widths = {v.shape[0] for v in state.values() if v.ndim == 2}
    assert 7 in widths and TrainConfig().model.hidden not in widths

def test_defaults_then_preset_then_config_then_flags(data_file, tmp_path):
    default = TrainConfig()
    config = tmp_path / "cfg.yaml"
    # The file sets what the sonyc preset also sets (gamma, model.hidden) and what the flags
    # then set again (lr, model.layers).
    config.write_text("method: le\ngamma: 50.0\nlr: 0.002\nepochs: 1\nbatch_size: 16\n"
                      "model:\n  hidden: 8\n  layers: 3\n")
    saved = train("--data", data_file, "--preset", "sonyc", "--config", config, "--lr", 0.003,
                  "--layers", 2, "--out", tmp_path / "run")
    assert "alpha" not in saved  # an LE run's config holds LE's parameters, not MT's
    assert saved["model"]["dropout"] == 0.6  # the preset's, the file left it alone
    assert saved["gamma"] == 50.0 and saved["model"]["hidden"] == 8  # file over preset
    assert saved["method"] == "le" and saved["epochs"] == 1
    assert saved["lr"] == 0.003 and saved["model"]["layers"] == 2  # flags over file
    assert saved["weight_decay"] == default.weight_decay  # untouched by every layer
    assert saved["lr_decay_epochs"] == list(default.lr_decay_epochs)
    # Without the flags the file's values stand; without the file, the preset's.
    saved = train("--data", data_file, "--preset", "sonyc", "--config", config,
                  "--out", tmp_path / "run2")
    assert (saved["lr"], saved["model"]["layers"]) == (0.002, 3)
    saved = train("--data", data_file, "--preset", "sonyc", "--method", "lemt", "--epochs", 1,
                  "--out", tmp_path / "run3")
    assert (saved["gamma"], saved["model"]["layers"], saved["model"]["hidden"]) == (95.0, 1, 512)
    assert saved["alpha"] == 0.99 != TrainConfig(method="mt").params.alpha  # preset over defaults


def test_saved_config_reproduces_the_run(data_file, tmp_path):
    first = tmp_path / "first"
    saved = train("--data", data_file, "--method", "mt", "--epochs", 2, "--batch-size", 16,
                  "--layers", 1, "--hidden", 8, "--missing", 0.4, "--seed", 3, "--beta", 1.5,
                  "--out", first)
    again = tmp_path / "again"
    assert train("--data", data_file, "--config", first / "config.yaml", "--out", again) == saved
    for name in ("metrics.json", "history.json"):
        assert json.loads((again / name).read_text()) == json.loads((first / name).read_text()), name
    with np.load(first / "predictions.npz") as a, np.load(again / "predictions.npz") as b:
        assert np.array_equal(a["scores"], b["scores"])
    # And the run depends on what the config holds: another seed gives other predictions.
    other = tmp_path / "other"
    train("--data", data_file, "--config", first / "config.yaml", "--seed", 4, "--out", other)
    with np.load(first / "predictions.npz") as a, np.load(other / "predictions.npz") as b:
        assert not np.array_equal(a["scores"], b["scores"])
