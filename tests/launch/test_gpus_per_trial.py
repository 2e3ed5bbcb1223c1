"""GPUs: ``tagtune study --gpus-per-trial`` reaches the trial's Ray resource request and its
config (device cuda, hence MLflow's params), and is refused where no node has a GPU;
``tagtune train --device``."""

from __future__ import annotations

import pytest
import torch
import yaml

from tagtune.launch.study import _trainable, trial_resources
from tagtune.launch.tracking import run_params
from tagtune.study.config import ConfigError
from tagtune.study.folder import StudySettings
from tests.conftest import invoke
from tests.launch.test_preflight import SMALL, refused_once_ray_is_up


def test_a_gpu_share_makes_the_trials_train_on_cuda_and_logs_it():
    s = StudySettings(data="/d.h5", storage="/s", gpus_per_trial=0.25, cpus_per_trial=2)
    assert trial_resources(s) == {"cpu": 2, "gpu": 0.25}
    config = s.base_config(method="b1", missing=0.0)
    assert config["device"] == "cuda"
    assert run_params(config)["device"] == "cuda"  # MLflow's params of the trial
    cpu = StudySettings(data="/d.h5", storage="/s")
    assert trial_resources(cpu) == {"cpu": 1}  # no GPU key at all: as before GPUs existed
    assert cpu.base_config(method="b1", missing=0.0)["device"] == "cpu"
    # the device follows the resources, whatever the train overrides say
    forced = StudySettings(data="/d.h5", storage="/s", train={"device": "cuda", "deterministic": True})
    assert forced.base_config()["device"] == "cpu" and forced.base_config()["deterministic"] is True


@pytest.mark.parametrize("bad", [-0.5, 1.5])
def test_gpus_per_trial_is_a_share_of_one_or_whole_gpus(bad):
    with pytest.raises(ConfigError, match="study: gpus_per_trial: must be a fraction"):
        StudySettings(data="/d.h5", storage="/s", gpus_per_trial=bad)
    assert StudySettings(data="/d.h5", storage="/s", gpus_per_trial=2).gpus_per_trial == 2.0


def test_the_trainable_asks_ray_for_the_gpu_share(ray_session, tiny_dataset):
    s = StudySettings(data="/d.h5", storage="/s", gpus_per_trial=0.5)
    pgf = _trainable(s, tiny_dataset)._resources  # what Tune's placement group requests
    assert pgf.required_resources == {"CPU": 1.0, "GPU": 0.5}
    plain = _trainable(StudySettings(data="/d.h5", storage="/s"), tiny_dataset)._resources
    assert plain.required_resources == {"CPU": 1.0}


def test_a_gpu_study_on_a_local_ray_without_gpus_is_refused(tmp_path, data_file, ray_session):
    line = refused_once_ray_is_up(["--data", data_file, "--storage", tmp_path, "--gpus-per-trial", 0.5,
                                   *SMALL])
    assert line == (
        "error: study: gpus_per_trial: 0.5 GPUs per trial, but no node has a GPU: "
        "no trial could ever start")
    assert not (tmp_path / "study" / "search").exists()
    assert yaml.safe_load((tmp_path / "study" / "study.yaml").read_text())["gpus_per_trial"] == 0.5


def _train(*args):
    return invoke("train", *args, "--no-progress")


def test_train_device_cpu_and_deterministic_reach_config_yaml(data_file, tmp_path):
    before = torch.get_num_threads()
    r = _train("--data", data_file, "--method", "b1", "--epochs", "1", "--device", "cpu",
               "--deterministic", "--out", tmp_path / "run")
    torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["device"] == "cpu" and saved["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # scoped to the run


def test_train_auto_records_where_it_ran(data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = _train("--data", data_file, "--method", "b1", "--epochs", "1", "--device", "auto",
               "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["device"] == "cpu"


def test_train_device_cuda_without_a_gpu_is_one_line_exit_2(data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("tagtune.study.fit.run.fit", lambda *a, **k: pytest.fail("trained anyway"))
    r = _train("--data", data_file, "--method", "b1", "--device", "cuda", "--out", tmp_path / "run")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config: device: cuda asked for"), r.output
    assert not (tmp_path / "run").exists()
