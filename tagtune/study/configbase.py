"""The part of the run configuration below the methods and the network: the architectures,
devices and precisions, the per-dataset presets and :class:`ModelConfig`.

Torch-free and free of tagtune's other modules but :mod:`tagtune.study.errors`, so that the
network (model.py, device.py, precision.py) and the method modules read it without importing
:mod:`tagtune.study.config`, whose TrainConfig is built from the methods' declarations: the
import graph has no cycle. :mod:`tagtune.study.config` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tagtune.study.errors import ConfigError

ARCHS: tuple[str, ...] = ("residual", "paper")
"""``residual``: softmax attention, a residual around every embedding layer (tagtune's);
``paper``: the paper's code's network (clamped sigmoid attention over time, one skip from the
raw input to the embedding stack's output). See :mod:`tagtune.study.nn.model`."""
DEFAULT_ARCH = "residual"  # the science bench decides; switching the default is this line
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""Where a run trains: ``auto`` = the GPU when torch sees one (tagtune.study.nn.device)."""
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")
"""Arithmetic of a run: ``bf16`` = mixed precision, ``auto`` = bf16 where native
(tagtune.study.nn.precision)."""
DEFAULT_PRECISION = "auto"  # bf16 where native: safe by the science check, faster (docs/precision.md)
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's settings per dataset (Sec. 4), on tagtune's default network; the openmic
    # values are also TrainConfig's defaults. (The -paper presets are added below.)
    "openmic": {"gamma": 10.0, "alpha": 0.999, "beta": 3.0,
                "model": {"layers": 3, "hidden": 128, "dropout": 0.6}},
    "sonyc": {"gamma": 95.0, "alpha": 0.99, "beta": 3.0,
              "model": {"layers": 1, "hidden": 512, "dropout": 0.6}},
}


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(name, problem)


@dataclass(frozen=True)
class ModelConfig:
    """The attention multiple-instance model (Kong et al. 2018; Gururani et al. 2019)."""

    layers: int = 3
    """L: number of embedding layers (Linear + BatchNorm + ReLU + dropout)."""
    hidden: int = 128
    """H: width of the embedding layers."""
    dropout: float = 0.6
    """Dropout rate after every embedding layer."""
    arch: str = DEFAULT_ARCH
    """Network: residual (softmax attention, per-layer residuals) or paper (the paper's code's:
    clamped sigmoid attention, one skip from the raw input; needs hidden == the input's F)."""

    def __post_init__(self) -> None:
        _check(self.arch in ARCHS, "arch", f"unknown network {self.arch!r}; use one of {', '.join(ARCHS)}")
        _check(self.layers >= 0, "layers", f"must be >= 0, got {self.layers}")
        _check(self.hidden >= 1, "hidden", f"must be >= 1, got {self.hidden}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


# The paper's exact setup as its code ran it: its network, Adam (wd 1e-5, batch 64, 100
# epochs, lr halved every 30), the EMA warm-up, MT reported from the student, and the
# learning rate of each method's run script (PAPER_LR; applied by preset_config).
_PAPER_RUN = {"weight_decay": 1e-5, "batch_size": 64, "epochs": 100, "lr_decay_epochs": [30, 60, 90],
              "lr_decay": 0.5, "rampup_epochs": 0, "ema_warmup": True, "mt_select": "student"}
for _name in ("openmic", "sonyc"):
    PRESETS[f"{_name}-paper"] = {**PRESETS[_name], **_PAPER_RUN,
                                 "model": {**PRESETS[_name]["model"], "arch": "paper"}}


__all__ = ["ARCHS", "DEFAULT_ARCH", "DEFAULT_PRECISION", "DEVICES", "PRECISIONS", "PRESETS", "ModelConfig"]
