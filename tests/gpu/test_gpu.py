"""tagtune on a CUDA GPU: every method fits there, the GPU's numbers match the CPU's up to rounding,
``deterministic: true`` repeats bitwise, checkpoints resume on the GPU and on the CPU, fused trials
equal each trial alone, and Ray's fractional GPUs share one card.

On a GPU node (only torch, numpy, h5py, pandas, scipy, scikit-learn and pytest needed: no Ray,
Optuna, MLflow, YAML; tests/gpu/test_gpu_imports.py checks that)::

    make test-gpu        # python -m pytest -q -m gpu tests/gpu -p no:cacheprovider

Where torch sees no GPU every test skips with its reason. Dry run, to check the tests' logic on a
machine without one: ``TAGTUNE_GPU_TESTS_ON=cpu make test-gpu`` runs the same tests with the device
``cpu`` and ``tagtune.study.nn.device.GENERIC_ON_CPU`` on, i.e. what a GPU runs, on the CPU (the GPU
vs CPU comparisons then compare the CPU with itself; the Ray test skips: no GPU to share).
A minute or two on a GPU: small synthetic data, 2-3 epochs a fit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tagtune.study import methods
from tagtune.study.config import METHODS, ModelConfig, TrainConfig
from tagtune.study.fit.stacked import fit_many
from tagtune.study.fit.train import FitResult, evaluate_fit, fit
from tagtune.study.nn import device as devices
from tests.conftest import TINY_CONFIG
from tests.gpu.conftest import DRY

pytestmark = pytest.mark.gpu

# precision pinned: a default of "auto" would train in bf16 on a GPU, and these tolerances are fp32's.
BASE = TrainConfig(epochs=3, seed=1, lr_decay_epochs=(), precision="fp32",
                   model=ModelConfig(layers=2, hidden=128, dropout=0.3))
# dropout 0: a CPU and a GPU draw different masks (docs/gpus.md), without it only rounding differs.
# hidden = F (128): a residual on every layer, so no parameter has a true gradient of 0 that Adam would
# turn into lr-sized steps of rounding noise (see tests/study/test_stacked.py).
NO_DROPOUT = ModelConfig(layers=2, hidden=128, dropout=0.0)
# GPU vs CPU, val/loss per epoch after up to 3 epochs: the two CPU paths (hand-fused kernels + flat Adam
# vs autograd + torch Adam, sums in other orders) differ by <= 5e-7 on this data; cuBLAS vs MKL is the
# same kind of rounding. 1e-3 leaves 2000x for Adam to amplify it over ~18 steps, and is still ~40x
# below what one epoch moves the loss (4e-2 to 6e-2): a lost step, a wrong lr or seed fails.
CROSS_ATOL = 1e-3
# Fused vs alone on one device: a batched matmul and a hand-written BatchNorm sum in another order than
# a single matmul and cuDNN's BatchNorm; the CPU's test holds 2e-5 over these 2 epochs, 5x room here.
FUSED_ATOL = 1e-4


def _numbers(logs: dict) -> dict[str, float]:
    return {k: v for k, v in logs.items() if isinstance(v, float)}


def _on(result: FitResult, device: str) -> bool:
    return next(result.model.parameters()).device.type == device


def _nets(result: FitResult) -> list[torch.nn.Module]:
    return [n for n in (result.model, result.other, result.le_teacher) if n is not None]


def _assert_bitwise(a: FitResult, b: FitResult) -> None:
    assert a.history == b.history
    for na, nb in zip(_nets(a), _nets(b), strict=True):
        for (name, x), y in zip(na.state_dict().items(), nb.state_dict().values(), strict=True):
            assert torch.equal(x, y), name


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits(synth_data, device, method):
    r = fit(synth_data, dataclasses.replace(BASE, method=method, device=device))
    assert _on(r, device)
    assert len(r.history) == BASE.epochs * len(methods.stages(method))
    # A NaN anywhere in the logs (a loss, a method's own term, a metric) is a GPU-path bug.
    bad = [(h["epoch"], k) for h in r.history for k, v in _numbers(h).items() if not math.isfinite(v)]
    assert not bad, bad
    test = {k: v for k, v in evaluate_fit(r, synth_data).items() if k.startswith("test")}
    assert test and all(math.isfinite(v) for v in test.values()), test


@pytest.mark.parametrize("method", ["b1", "mt"])
def test_gpu_equals_cpu_up_to_rounding(synth_data, device, method, no_tf32, monkeypatch):
    cfg = dataclasses.replace(BASE, method=method, model=NO_DROPOUT, deterministic=True)
    gpu = fit(synth_data, dataclasses.replace(cfg, device=device))
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", True)  # the GPU's path, on the CPU
    cpu = fit(synth_data, dataclasses.replace(cfg, device="cpu"))
    assert _on(gpu, device) and _on(cpu, "cpu")
    for g, c in zip(gpu.history, cpu.history, strict=True):
        for key in ("train/loss", "val/loss"):
            assert g[key] == pytest.approx(c[key], abs=CROSS_ATOL), (key, g["epoch"])


@pytest.mark.parametrize("method", ["b1", "mt", "le"])
def test_deterministic_repeats_bitwise(synth_data, device, method):
    cfg = dataclasses.replace(BASE, method=method, epochs=2, device=device, deterministic=True)
    _assert_bitwise(fit(synth_data, cfg), fit(synth_data, cfg))


# Where the checkpoint is written: MT mid-run; LE in its student stage (the teacher and the enhanced
# mask in the checkpoint too).
SAVE_AT = {"mt": 2, "le": 3}


@pytest.mark.parametrize("method", ["mt", "le"])
def test_a_checkpoint_resumes_on_the_gpu_bitwise_and_on_the_cpu(synth_data, device, method, tmp_path,
                                                              monkeypatch):
    k = SAVE_AT[method]
    cfg = dataclasses.replace(BASE, method=method, epochs=3 if method == "mt" else 2, device=device,
                              deterministic=True)

    def on_epoch(logs, save):
        if logs["epoch"] == k:
            save(tmp_path)

    straight = fit(synth_data, cfg, on_epoch=on_epoch)
    _assert_bitwise(straight, fit(synth_data, cfg, resume=tmp_path))
    # On the CPU's own path: the noise stream restarts there (docs/gpus.md), so it is another draw of
    # the remaining epochs, not the same numbers; it must train them all, finite.
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", False)
    cpu = fit(synth_data, dataclasses.replace(cfg, device="cpu"), resume=tmp_path)
    assert _on(cpu, "cpu")
    assert [h["epoch"] for h in cpu.history] == [h["epoch"] for h in straight.history]
    assert cpu.history[:k] == straight.history[:k]  # restored from the checkpoint, as written
    rest = cpu.history[k:]
    assert rest and all(math.isfinite(h[key]) for h in rest for key in ("train/loss", "val/loss"))


@pytest.mark.parametrize("method", ["b1", "mt", "le"])
def test_fused_trials_equal_each_alone(tiny_dataset, device, method):
    # As tests/study/test_stacked.py: hidden = F (6) for the reason given at NO_DROPOUT; different seeds
    # (own missing labels, weights, batch order, noise) and lrs.
    base = dataclasses.replace(TINY_CONFIG, method=method, missing=0.3, device=device, deterministic=True,
                               precision="fp32", model=ModelConfig(layers=2, hidden=6, dropout=0.3))
    cfgs = [dataclasses.replace(base, seed=s, lr=lr) for s, lr in ((1, 3e-3), (2, 1e-2), (1, 1e-3))]
    fused = fit_many(tiny_dataset, cfgs)
    alone = [fit(tiny_dataset, c) for c in cfgs]
    X = tiny_dataset.test.X
    for f, a in zip(fused, alone, strict=True):
        assert _on(f, device)
        assert [h["epoch"] for h in f.history] == [h["epoch"] for h in a.history]
        for hf, ha in zip(f.history, a.history, strict=True):
            for key in ("train/loss", "val/loss"):
                assert hf[key] == pytest.approx(ha[key], abs=FUSED_ATOL), (key, hf["epoch"])
        np.testing.assert_allclose(f.predict(X), a.predict(X), atol=10 * FUSED_ATOL)
    # The members really differ (not one run three times).
    assert len({r.history[-1]["val/loss"] for r in fused}) == 3


SHARES = 4


def test_fractional_gpus_share_one_card():
    if DRY:
        pytest.skip("dry run on the CPU (TAGTUNE_GPU_TESTS_ON=cpu): no GPU to share")
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process (the suite's own); run tests/gpu alone")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        seen = _share_one_gpu(ray, SHARES, wait_s=90.0)
    finally:
        ray.shutdown()
    assert len(seen) == SHARES and all(s["together"] for s in seen), seen  # all held the card at once
    assert all(s["cuda"] for s in seen), seen
    assert len({(tuple(s["gpu_ids"]), s["card"]) for s in seen}) == 1, seen  # one and the same card
    assert all(s["sum"] == 4.0 for s in seen), seen  # each computed on it


def _share_one_gpu(ray, n: int, wait_s: float) -> list[dict]:
    """``n`` tasks of ``1/n`` GPU each: each takes the GPU, then waits at a barrier (an actor counting
    arrivals) until all ``n`` have arrived or ``wait_s`` passed; what each saw."""

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self):
            self.arrived = 0

        def arrive(self) -> None:
            self.arrived += 1

        def count(self) -> int:
            return self.arrived

    # num_cpus 0.25: with Ray's default of 1 CPU a task, the 2 CPUs would let only 2 run at once.
    @ray.remote(num_gpus=1 / n, num_cpus=0.25)
    def share(barrier) -> dict:
        import time

        import torch

        cuda = torch.cuda.is_available()
        x = torch.ones(4, device="cuda" if cuda else "cpu")  # a CUDA context on the card, held
        ray.get(barrier.arrive.remote())
        deadline = time.monotonic() + wait_s
        while ray.get(barrier.count.remote()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        props = torch.cuda.get_device_properties(0) if cuda else None
        return {"together": ray.get(barrier.count.remote()) == n, "cuda": cuda,
                "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "card": str(getattr(props, "uuid", props.name)) if cuda else None, "sum": float(x.sum())}

    barrier = Barrier.remote()
    return ray.get([share.remote(barrier) for _ in range(n)])
