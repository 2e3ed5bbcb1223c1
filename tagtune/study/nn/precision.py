"""Mixed precision: matrix products in bf16, everything else in fp32.

``TrainConfig.precision``: ``fp32`` (every op as before, bitwise), ``bf16`` or ``auto`` (bf16
where the hardware has it natively -- a CPU with ``avx512_bf16`` or AMX, a GPU that supports
bf16 -- else fp32; the default since the science check, docs/precision.md). bf16 here is mixed
precision: the master weights, Adam's moments, the BatchNorms, the attention and class
probabilities, the losses, BCE and the metrics stay fp32; only the matrix products (embedding
layers and heads, forward and backward) take bf16 operands (8 mantissa bits, fp32's exponent
range: no loss scaling needed) and accumulate in fp32. A model carries its choice as
``model.lowp`` (None: fp32):

- the CPU path's hand-fused kernels (:mod:`tagtune.study.nn.fused`, :mod:`tagtune.study.nn.fused_paper`)
  run each pass inside :func:`products`: oneDNN's bf16 math mode, which rounds each product's
  operands to bf16 inside the kernel and returns fp32 (autocast does not reach a custom autograd
  Function's hand-written backward, and casting by hand cost what bf16 saved: measured);
- the generic path (GPU) runs ``reference_forward`` under :func:`autocast`.

Why bf16 and not fp16: fp32's exponent range, so no gradient scaler and no overflow in
BatchNorm's statistics; what it costs is precision, which the science check measures
(docs/precision.md).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch

from tagtune.study.configbase import PRECISIONS
from tagtune.study.errors import ConfigError

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
    return cpu_native_bf16() and bf16_products_apply()


@functools.cache
def bf16_products_apply() -> bool:
    """Whether oneDNN's bf16 math mode (:func:`products`) changes a product on this CPU. The flag
    is not enough: on an AMD EPYC with ``avx512_bf16`` (seen here, torch 2.13) torch sends fp32
    products to MKL, not oneDNN, so the mode does nothing and "bf16" would be fp32 under another
    name in every log. One small product, in and out of the mode, once a process."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 128, generator=g), torch.randn(128, 64, generator=g)
    with products(LOWP):
        got = torch.mm(a, b)
    return not torch.equal(got, torch.mm(a, b))


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
    what = (" / ".join(CPU_FLAGS) + ", with torch's products on oneDNN" if device_type == "cpu"
            else "bf16 support")
    print(f"warning: precision bf16: this {device_type.upper()} has no native bf16 ({what}); it runs, "
          "emulated or in fp32, no faster and likely slower than fp32 (use fp32 or auto)", file=sys.stderr)


def dtype(resolved: str) -> torch.dtype | None:
    """``model.lowp`` for a resolved precision: the products' dtype, None for fp32."""
    return LOWP if resolved == "bf16" else None


def autocast(device: torch.device, lowp: torch.dtype | None) -> AbstractContextManager:
    """torch's autocast to ``lowp`` on ``device``'s type (the generic path); nothing for fp32."""
    if lowp is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=lowp)


@contextmanager
def products(lowp: torch.dtype | None) -> Iterator[None]:
    """The fused CPU kernels' matrix products, in ``lowp``: for bf16, oneDNN's bf16 math mode
    (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``) for the duration -- each product
    rounds its fp32 operands to bf16 inside the kernel, accumulates in fp32 and returns fp32. No
    cast of our own: measured (docs/precision.md), a cast to bf16 and back around every product
    cost what the bf16 product saved, and rounded the result to bf16 too. For fp32 (None),
    nothing is set: the same ops, bitwise, as before precision existed.

    torch keeps a product whose inner dimension is 16 or less on its fp32 BLAS path even in this
    mode (its heuristic: too small for oneDNN to pay), so a toy network's products stay fp32 (and
    the head's input gradient where 2 x classes <= 16); every other product of the OpenMIC
    (F = H = 128) and SONYC-UST (F = H = 512) networks runs in bf16.
    """
    if lowp is None:
        yield
        return
    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = before


__all__ = ["CPU_FLAGS", "LOWP", "PRECISIONS", "autocast", "cpu_native_bf16", "dtype", "native_bf16",
           "products", "resolve"]
