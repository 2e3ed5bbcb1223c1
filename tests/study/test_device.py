"""Devices: the choice of device, the generic torch path (what a GPU runs, here on the CPU),
checkpoints crossing between the two paths, the deterministic switch."""

from __future__ import annotations

import math

import pytest
import torch

from tagtune.study.config import ConfigError, TrainConfig, from_dict, replace, to_dict
from tagtune.study.fit.checkpoint import STATE_FILE, crossed_noise_seed, load_payload, optimizer_state
from tagtune.study.fit.train import fit
from tagtune.study.nn import device as devices
from tests.conftest import TINY_CONFIG


@pytest.fixture
def generic(monkeypatch):
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", True)


def _weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _saving(where):
    def on_epoch(logs, save):
        save(where / str(logs["epoch"]))
    return on_epoch


def test_resolve_picks_the_gpu_when_one_is_visible():
    assert devices.resolve("cpu", lambda: True).type == "cpu"
    assert devices.resolve("auto", lambda: True).type == "cuda"
    assert devices.resolve("auto", lambda: False).type == "cpu"
    assert devices.resolve("cuda", lambda: True).type == "cuda"


def test_cuda_without_a_gpu_is_one_line_naming_the_field(monkeypatch, tiny_dataset):
    with pytest.raises(ConfigError, match="device: cuda asked for") as e:
        devices.resolve("cuda", lambda: False)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device"):
        fit(tiny_dataset, replace(TINY_CONFIG, device="cuda"))
    with pytest.raises(ConfigError, match="device: unknown device 'gpu'"):
        TrainConfig(device="gpu")


def test_device_and_deterministic_round_trip_through_the_config_dict():
    cfg = replace(TINY_CONFIG, device="cpu", deterministic=True)
    d = to_dict(cfg)
    assert d["device"] == "cpu" and d["deterministic"] is True
    assert from_dict(TrainConfig, d) == cfg
    with pytest.raises(ConfigError, match="deterministic: must be true or false"):
        from_dict(TrainConfig, {**d, "deterministic": "yes"})


def test_generic_dropout_keeps_one_minus_p_and_scales(generic):
    g = torch.Generator().manual_seed(0)
    y = devices.dropout(torch.ones(200_000), 0.6, g)
    kept = y[y > 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.4))
    assert abs(kept.numel() / y.numel() - 0.4) < 0.005
    again = devices.dropout(torch.ones(200_000), 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)  # the generator alone decides the mask


@pytest.mark.parametrize("method", ["b1", "le", "mt"])
def test_generic_path_trains_reproducibly_and_differs_from_the_cpu_path(generic, monkeypatch,
                                                                        tiny_dataset, tmp_path, method):
    cfg = replace(TINY_CONFIG, method=method)
    a = fit(tiny_dataset, cfg, on_epoch=_saving(tmp_path))
    b = fit(tiny_dataset, cfg)
    assert _equal(_weights(a.model), _weights(b.model))
    assert all(math.isfinite(h["train/loss"]) for h in a.history)
    assert a.model.generic
    # torch Adam over the parameters one by one, not FlatAdam's one flat buffer
    opt = torch.load(tmp_path / str(a.history[-1]["epoch"]) / STATE_FILE, weights_only=True)["optimizer"]
    assert len(opt["param_groups"][0]["params"]) == len(list(a.model.parameters()))
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", False)
    c = fit(tiny_dataset, cfg)
    assert not _equal(_weights(a.model), _weights(c.model))  # other masks, other forward


def test_without_dropout_the_generic_path_trains_the_same_network(monkeypatch, tiny_dataset):
    # fp32: the two paths' bf16 differ by design (autocast's bf16 outputs, oneDNN's fp32 ones)
    cfg = replace(TINY_CONFIG, epochs=1, precision="fp32", model=replace(TINY_CONFIG.model, dropout=0.0))
    cpu = fit(tiny_dataset, cfg)
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", True)
    gen = fit(tiny_dataset, cfg)
    # The same update, only the rounding differs. Compared through the predictions: Adam
    # blows rounding up where the true gradient is 0 (a bias feeding a BatchNorm).
    assert cpu.history[0]["train/loss"] == pytest.approx(gen.history[0]["train/loss"], rel=1e-5)
    X = tiny_dataset.test.X
    assert abs(cpu.predict(X) - gen.predict(X)).max() < 1e-3
    assert _weights(cpu.model)["cla.weight"].allclose(_weights(gen.model)["cla.weight"], atol=1e-6)


def test_optimizer_state_converts_exactly_both_ways():
    params = [torch.zeros(3, 2), torch.zeros(4), torch.zeros(1)]
    flat = {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.arange(11.0),
                          "exp_avg_sq": torch.arange(11.0) * 2}},
            "param_groups": [{"lr": 0.1, "params": [0]}]}
    per = optimizer_state(flat, params, flat=False)
    assert per["param_groups"][0]["params"] == [0, 1, 2]
    assert torch.equal(per["state"][1]["exp_avg"], torch.arange(6.0, 10.0))
    assert per["state"][0]["exp_avg_sq"].shape == (3, 2)
    assert float(per["state"][2]["step"]) == 7.0
    back = optimizer_state(per, params, flat=True)
    assert _equal(back["state"][0], flat["state"][0]) and back["param_groups"] == flat["param_groups"]
    assert optimizer_state(flat, params, flat=True) is flat  # already in the right form
    with pytest.raises(ConfigError, match="resume"):
        optimizer_state(flat, params[:2], flat=False)


@pytest.mark.parametrize("first_generic", [True, False])
def test_a_checkpoint_resumes_on_the_other_path(monkeypatch, tiny_dataset, tmp_path, first_generic):
    cfg = replace(TINY_CONFIG, method="mt", epochs=3)
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", first_generic)
    fit(tiny_dataset, replace(cfg, epochs=3), on_epoch=_saving(tmp_path))
    saved = torch.load(tmp_path / "1" / STATE_FILE, weights_only=True)
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", not first_generic)
    r = fit(tiny_dataset, cfg, resume=tmp_path / "1", on_epoch=_saving(tmp_path / "after"))
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.history[0] == saved["history"][0]
    assert all(math.isfinite(h["train/loss"]) for h in r.history)
    # the moments crossed exactly: re-saving right after the resume gives them back
    again = torch.load(tmp_path / "after" / "2" / STATE_FILE, weights_only=True)
    assert float(next(iter(again["optimizer"]["state"].values()))["step"]) > float(
        next(iter(saved["optimizer"]["state"].values()))["step"])


def test_a_gpu_written_noise_stream_restarts_from_its_own_seed_on_the_cpu(tiny_dataset, tmp_path):
    cfg = replace(TINY_CONFIG, epochs=3)
    fit(tiny_dataset, cfg, on_epoch=_saving(tmp_path))
    path = tmp_path / "1" / STATE_FILE
    payload = torch.load(path, weights_only=True)
    # what a CUDA generator's get_state() gives: Philox seed and offset, 16 bytes
    payload["rng"]["noise"], payload["rng"]["noise_device"] = torch.zeros(16, dtype=torch.uint8), "cuda"
    payload["cfg"]["device"] = "cuda"
    torch.save(payload, path)
    a = fit(tiny_dataset, cfg, resume=tmp_path / "1")
    b = fit(tiny_dataset, cfg, resume=tmp_path / "1")
    assert a.history == b.history
    assert crossed_noise_seed(0, 0, 1) != crossed_noise_seed(0, 0, 2) != crossed_noise_seed(1, 0, 2)
    uninterrupted = fit(tiny_dataset, cfg)
    assert a.history[0] == uninterrupted.history[0]
    assert a.history[1]["train/loss"] != uninterrupted.history[1]["train/loss"]  # the noise restarted


def test_resume_ignores_where_and_how_but_not_what(tiny_dataset, tmp_path):
    fit(tiny_dataset, TINY_CONFIG, on_epoch=_saving(tmp_path))
    load_payload(tmp_path / "1", replace(TINY_CONFIG, device="cpu", deterministic=True, threads=2))
    with pytest.raises(ConfigError, match=r"different config \(lr\)"):
        load_payload(tmp_path / "1", replace(TINY_CONFIG, lr=1e-2))
    path = tmp_path / "1" / STATE_FILE  # a state written before the two fields existed
    payload = torch.load(path, weights_only=True)
    for k in ("device", "deterministic"):
        del payload["cfg"][k]
    torch.save(payload, path)
    load_payload(tmp_path / "1", TINY_CONFIG)


def test_deterministic_switch_is_scoped_and_changes_nothing_on_the_cpu(monkeypatch, tiny_dataset):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with devices.deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == devices.CUBLAS_WORKSPACE
    assert not torch.are_deterministic_algorithms_enabled()
    a = fit(tiny_dataset, replace(TINY_CONFIG, deterministic=True))
    b = fit(tiny_dataset, TINY_CONFIG)
    assert _equal(_weights(a.model), _weights(b.model))
