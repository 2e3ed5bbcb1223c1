"""Where a run trains: the device a config names, and torch's deterministic switch.

``auto`` is the GPU when torch sees one, else the CPU. Inside a Ray Tune trial the GPU torch
sees is the one Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES), so ``cuda`` means that GPU;
a study therefore names ``cpu`` or ``cuda`` explicitly (``auto`` would let a trial that was
given no GPU take one anyway where Ray leaves the card visible).

Two paths through the fit loop (:func:`generic`):

- the CPU path, tuned for this small network: the hand-fused forward/backward
  (:mod:`tagtune.study.nn.fused`), 16-bit dropout masks (:mod:`tagtune.study.nn.fast`) and
  :class:`~tagtune.study.nn.fast.FlatAdam`;
- the generic torch path, used on a GPU: the network's plain autograd forward
  (``reference_forward``), dropout masks from ``bernoulli_`` with the run's own generator
  (a CUDA generator on a GPU) and ``torch.optim.Adam(fused=True)``. ``GENERIC_ON_CPU`` runs it
  on the CPU, which is how the tests exercise what a GPU runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from tagtune.study.configbase import DEVICES
from tagtune.study.errors import ConfigError

GENERIC_ON_CPU = False
"""Internal switch (tests, benches): the generic torch path on the CPU too."""
CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS's setting for deterministic results (CUDA >= 10.2), set unless the user set one."""


def resolve(name: str, cuda_available: Callable[[], bool] | None = None) -> torch.device:
    """The device ``name`` (auto, cpu, cuda) means on this machine; ``cuda`` without a visible
    GPU is a ConfigError."""
    available = (cuda_available or torch.cuda.is_available)
    if name not in DEVICES:
        raise ConfigError("device", f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if name == "cpu":
        return torch.device("cpu")
    if available():
        return torch.device("cuda")
    if name == "cuda":
        raise ConfigError("device", "cuda asked for, but torch sees no GPU (torch.cuda.is_available() "
                          "is False); use --device cpu or auto")
    return torch.device("cpu")


def generic(device: torch.device) -> bool:
    """Whether a run on ``device`` takes the generic torch path (a GPU, or GENERIC_ON_CPU)."""
    return device.type != "cpu" or GENERIC_ON_CPU


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(on)`` for the block, the previous setting after it.

    On the CPU every kernel this project uses is deterministic already; on a GPU this picks the
    deterministic kernels (and cuBLAS's fixed workspace), slower, and errors on an op that has none.
    """
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout from torch's own ``bernoulli_`` on ``x``'s device, drawn from ``generator``
    (a generator of that device): keep with probability 1 - p, scale the kept by 1 / (1 - p)."""
    return x * dropout_mask(x.shape, x.dtype, x.device, p, generator)


def dropout_mask(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device, p: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """:func:`dropout`'s mask for an input of that shape, dtype and device, scaled by 1 / (1 - p)."""
    mask = torch.empty(shape, dtype=dtype, device=device).bernoulli_(1.0 - p, generator=generator)
    return mask.div_(1.0 - p)


__all__ = ["CUBLAS_WORKSPACE", "DEVICES", "GENERIC_ON_CPU", "deterministic", "dropout", "dropout_mask",
           "generic", "resolve"]
