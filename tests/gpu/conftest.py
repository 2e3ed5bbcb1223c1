"""Where the GPU tests run: ``cuda``, or the CPU in a dry run (``TAGTUNE_GPU_TESTS_ON=cpu``); every
``gpu``-marked test skips, with its reason, where neither applies. See tests/gpu/test_gpu.py."""

from __future__ import annotations

import os

import pytest
import torch

from tagtune.study.data.synth import synthesize
from tagtune.study.nn import device as devices

_ON = os.environ.get("TAGTUNE_GPU_TESTS_ON", "cuda")
if _ON not in ("cuda", "cpu"):
    raise pytest.UsageError(f"TAGTUNE_GPU_TESTS_ON={_ON!r}: use cpu (a dry run on the CPU) or leave it unset")
DRY = _ON == "cpu"
"""A dry run: the same tests on the CPU, through the path a GPU runs (devices.GENERIC_ON_CPU)."""
NO_GPU = "torch sees no GPU (torch.cuda.is_available() is False)"

# cuBLAS reads its workspace setting once, at its first use in the process: set before any test can
# touch the GPU, so a deterministic test after a non-deterministic one still gets the fixed workspace.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", devices.CUBLAS_WORKSPACE)


def pytest_collection_modifyitems(config, items):
    if DRY or torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason=NO_GPU))


@pytest.fixture
def device(monkeypatch) -> str:
    """The device the configs name; in a dry run the CPU, taking the GPU's (generic) path."""
    if DRY:
        monkeypatch.setattr(devices, "GENERIC_ON_CPU", True)
    return _ON


@pytest.fixture(scope="session")
def synth_data():
    """Small OpenMIC-like data (380/67/153 clips of 10 x 128, 20 classes): a GPU epoch in milliseconds."""
    return synthesize("openmic-like", seed=0, n_clips=600)


@pytest.fixture
def no_tf32():
    """Full fp32 matrix products on the GPU for the test (TF32 keeps 10 mantissa bits: not rounding-sized)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
