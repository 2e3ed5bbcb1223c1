"""``--preset openmic-paper`` / ``sonyc-paper``: the paper's exact setup, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.launch.cli_train import resolve_config
from tagtune.study.config import ConfigError, applies, to_dict
from tagtune.study.data import Dataset, save
from tests.conftest import make_split

# What the paper's code ran (SiddGururani/audio_missing_labels, src/run_*.py, last commit).
COMMON = {"weight_decay": 1e-5, "batch_size": 64, "epochs": 100, "lr_decay_epochs": [30, 60, 90],
          "lr_decay": 0.5, "ema_warmup": True, "mt_select": "student", "beta": 3.0}
PAPER = {
    "openmic-paper": ({"gamma": 10.0, "alpha": 0.999},
                      {"layers": 3, "hidden": 128, "dropout": 0.6, "arch": "paper"},
                      {"b0": 5e-4, "b1": 5e-4, "le": 1e-3, "mt": 1e-3}),
    "sonyc-paper": ({"gamma": 95.0, "alpha": 0.99},
                    {"layers": 1, "hidden": 512, "dropout": 0.6, "arch": "paper"},
                    {"b0": 1e-3, "b1": 1e-3, "le": 1e-3, "mt": 1e-3}),
}


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("preset", sorted(PAPER))
@pytest.mark.parametrize("method", ["b0", "b1", "le", "mt"])
def test_paper_preset_resolves_to_the_papers_setup(preset, method):
    values, model, lrs = PAPER[preset]
    cfg = resolve_config(preset, method=method)
    # What the preset sets that the method reads (its config holds its own parameters only).
    expected = {k: v for k, v in {**COMMON, **values}.items() if applies(method, k)}
    got = {k: v for k, v in to_dict(cfg).items() if k in {**COMMON, **values}}
    assert set(got) == set(expected)
    assert {**got, "lr_decay_epochs": list(cfg.lr_decay_epochs)} == expected
    assert vars(cfg.model) == model
    # LE's teacher: the same script's lr
    assert cfg.lr == lrs[method] and getattr(cfg.params, "le_teacher_lr", None) is None


def test_the_plain_presets_keep_tagtunes_network_and_lr():
    cfg = resolve_config("openmic", method="b1")
    assert (cfg.model.arch, cfg.lr) == ("residual", 1e-3)
    assert resolve_config("openmic", method="mt").params.mt_select == "teacher"
    with pytest.raises(ConfigError, match="preset"):
        resolve_config("openmic-papr", method="b1")


def test_yaml_and_flags_override_the_paper_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.02\nmodel:\n  dropout: 0.3\n")
    cfg = resolve_config("openmic-paper", f, method="b1")
    assert (cfg.lr, cfg.model.dropout, cfg.model.arch) == (0.02, 0.3, "paper")
    cfg = resolve_config("openmic-paper", f, method="mt", lr=0.05, arch="residual", mt_select="teacher",
                         ema_warmup=False)
    assert (cfg.lr, cfg.model.arch, cfg.params.mt_select, cfg.params.ema_warmup) == (0.05, "residual",
                                                                                      "teacher", False)
    f.write_text("method: b0\n")  # the method from the file picks the preset's lr
    assert resolve_config("openmic-paper", f).lr == 5e-4


def test_tagtune_train_with_the_paper_preset(tmp_path):
    rng = np.random.default_rng(0)
    ds = Dataset(train=make_split(rng, 48, T=3, F=128, prefix="tr"),
                 valid=make_split(rng, 16, T=3, F=128, prefix="va"),
                 test=make_split(rng, 16, T=3, F=128, prefix="te"), classes=("a", "b", "c"), name="w")
    data = save(ds, tmp_path / "w.h5")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--method", "mt",
                                 "--preset", "openmic-paper", "--epochs", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["arch"] == "paper" and saved["lr"] == 1e-3 and saved["mt_select"] == "student"
    metrics = json.loads((out / "metrics.json").read_text())
    # The student is selected and exported; the teacher's figures sit beside, suffixed.
    assert {"test/f1_macro", "test/f1_macro_teacher", "val/loss_teacher"} <= set(metrics)
    state = torch.load(Path(out / "model.pt"), weights_only=True)["state_dict"]
    assert "linears.0.bias" not in state  # the paper network's bias-free embedding layers
    # The paper network on data whose width is not its H: one line, exit 2.
    small = save(Dataset(train=make_split(rng, 20, prefix="a"), valid=make_split(rng, 8, prefix="b"),
                         test=make_split(rng, 8, prefix="c"), classes=("a", "b", "c"), name="s"),
                 tmp_path / "s.h5")
    r = CliRunner().invoke(app, ["train", "--data", str(small), "--out", str(tmp_path / "o2"), "--method",
                                 "b1", "--preset", "openmic-paper", "--epochs", "1", "--no-progress"])
    assert r.exit_code == 2 and "model.hidden" in r.output and "Traceback" not in r.output
