"""Mixed precision: matrix products and their activations in bf16, everything else in fp32.

``TrainConfig.precision``: ``fp32`` (every op as before, bitwise), ``bf16`` or ``auto`` (bf16
where the hardware has it natively -- a CPU with ``avx512_bf16`` or AMX, a GPU that supports
bf16 -- else fp32). bf16 here is mixed precision: the master weights, Adam's moments, the
BatchNorms, the attention and class probabilities, the losses, BCE and the metrics stay fp32;
only the matrix products (embedding layers and heads, forward and backward) take bf16
operands (8 mantissa bits, fp32's exponent range: no loss scaling needed) and accumulate in
fp32. A model carries its choice as ``model.lowp`` (None: fp32):

- the CPU path's hand-fused kernels (:mod:`tagtune.study.fused`, :mod:`tagtune.study.fused_paper`)
  cast the operands of each product themselves through :func:`mm` / :func:`addmm` -- autocast
  does not reach a custom autograd Function's hand-written backward, and measured, the fused
  kernels with bf16 products beat the generic path under autocast on this network;
- the generic path (GPU) runs ``reference_forward`` under :func:`autocast`.

Why bf16 and not fp16: fp32's exponent range, so no gradient scaler and no overflow in
BatchNorm's statistics; what it costs is precision, which the science check measures
(docs/precision.md).
"""

from __future__ import annotations

import functools
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import Tensor

from tagtune.study.config import PRECISIONS, ConfigError

LOWP = torch.bfloat16
"""The low-precision dtype of ``bf16``."""
CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of a CPU with native bf16 arithmetic (AVX-512 BF16 dot products, AMX tiles)."""


@functools.cache
def cpu_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bf16 arithmetic natively: a ``CPU_FLAGS`` flag in ``cpuinfo``.
    (oneDNN's own ``_is_mkldnn_bf16_supported`` also says yes on plain AVX-512, where bf16 is
    emulated and slower than fp32.) No /proc/cpuinfo (not Linux): no."""
    try:
        return bool(set(Path(cpuinfo).read_text().split()) & set(CPU_FLAGS))
    except OSError:
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 products natively (faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_native_bf16()


def resolve(name: str, device: torch.device, native: bool | None = None) -> str:
    """What precision ``name`` (fp32, bf16, auto) means on ``device``: ``fp32`` or ``bf16``.

    ``bf16`` on a device without native bf16 stays ``bf16`` (it runs, emulated) with a one-line
    warning on stderr, once a process, that it is slower there; ``auto`` picks bf16 only where
    it is native.
    """
    if name not in PRECISIONS:
        raise ConfigError("precision", f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return "fp32"
    native = native_bf16(device) if native is None else native
    if name == "auto":
        return "bf16" if native else "fp32"
    if not native:
        _warn_emulated(device.type)
    return "bf16"


@functools.cache
def _warn_emulated(device_type: str) -> None:
    # One line, once: a fit resolves the precision at every stage, the CLI once before it.
    what = " / ".join(CPU_FLAGS) if device_type == "cpu" else "bf16 support"
    print(f"warning: precision bf16: this {device_type.upper()} has no native bf16 ({what}); it runs, "
          "emulated, slower than fp32 (use fp32 or auto)", file=sys.stderr)


def dtype(resolved: str) -> torch.dtype | None:
    """``model.lowp`` for a resolved precision: the products' dtype, None for fp32."""
    return LOWP if resolved == "bf16" else None


def autocast(device: torch.device, lowp: torch.dtype | None) -> AbstractContextManager:
    """torch's autocast to ``lowp`` on ``device``'s type (the generic path); nothing for fp32."""
    if lowp is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=lowp)


def low(t: Tensor, lowp: torch.dtype | None) -> Tensor:
    """``t`` as a product operand: in ``lowp``, or itself (fp32)."""
    return t if lowp is None else t.to(lowp)


def mm(a: Tensor, b: Tensor, lowp: torch.dtype | None) -> Tensor:
    """``a @ b`` in fp32: ``torch.mm`` itself for fp32, else on ``lowp`` operands (accumulated in
    fp32 by the kernel), the result back in fp32."""
    if lowp is None:
        return torch.mm(a, b)
    return torch.mm(a.to(lowp), b.to(lowp)).float()


def addmm(bias: Tensor, a: Tensor, b: Tensor, lowp: torch.dtype | None) -> Tensor:
    """``bias + a @ b`` in fp32 (``torch.addmm`` itself for fp32), the product as :func:`mm`'s."""
    if lowp is None:
        return torch.addmm(bias, a, b)
    return torch.mm(a.to(lowp), b.to(lowp)).float().add_(bias)


__all__ = ["CPU_FLAGS", "LOWP", "PRECISIONS", "addmm", "autocast", "cpu_native_bf16", "dtype", "low", "mm",
           "native_bf16", "resolve"]
