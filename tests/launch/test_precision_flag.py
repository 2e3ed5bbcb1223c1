"""``--precision`` through the real CLI and a study's ``train:`` block: the value reaches
config.yaml (auto resolved, as device is), a bad value is one line naming the field, and a
trial's MLflow params carry it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tagtune.study.nn import precision
from tests.conftest import invoke


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("given", ["bf16", "auto", "fp32"])
def test_precision_flag_reaches_config_yaml_resolved(data_file, tmp_path, given):
    out = tmp_path / "run"
    r = invoke("train", "--data", data_file, "--method", "b1", "--epochs", "1", "--precision", given,
               "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    want = {"auto": "bf16" if precision.native_bf16(torch.device("cpu")) else "fp32"}.get(given, given)
    assert saved["precision"] == want


def test_an_unknown_precision_is_one_line_naming_the_field(data_file, tmp_path):
    r = invoke("train", "--data", data_file, "--method", "b1", "--precision", "fp16",
               "--out", tmp_path / "run", "--no-progress")
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "precision" in lines[0] and "fp16" in lines[0]
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_trials_mlflow_params_carry_the_precision():
    from tagtune.launch.tracking import run_params

    params = run_params({"method": "b0", "precision": "bf16", "epochs": 2})
    assert params["precision"] == "bf16"
    assert run_params({"method": "le", "epochs": 2})["precision"] == "auto"  # the default, logged too


def test_a_study_train_block_sets_the_precision(tmp_path):
    from tagtune.study.folder import StudySettings, train_config

    settings = StudySettings(data=str(Path(tmp_path / "d.h5")), name="s", storage=str(tmp_path),
                             methods=("b1",), missing=(0.4,), train={"precision": "bf16"})
    assert train_config(settings.base_config(method="b1", missing=0.4)).precision == "bf16"
