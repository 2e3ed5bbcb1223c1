"""The methods: the four of Gururani & Lerch (2021) and newer ones, one module each, one step signature.

Every method module defines ``step(batch, state) -> (loss, logs)``: the loss of one
mini-batch (the fit loop does backward and the optimizer step) and a dict of detached
scalars to average over the epoch. It also declares its name, a one-line summary, the kinds of
observations it learns from, its parameters and what a study searches, and the hooks it needs
(MT's EMA teacher, LE's stage boundary): see :mod:`~tagtune.study.methods.registry`, which finds
the modules and derives METHODS, the config's checks, the CLI's flags and the search spaces.

- :mod:`~tagtune.study.methods.b0`: missing labels are negatives.
- :mod:`~tagtune.study.methods.b1`: loss masked to the observed labels.
- :mod:`~tagtune.study.methods.le`: label enhancing (Fonseca et al. 2020).
- :mod:`~tagtune.study.methods.mt`: mean teacher (Tarvainen & Valpola 2017).

Beyond the paper:

- :mod:`~tagtune.study.methods.lemt`: LE with MT's consistency in both stages (the paper's future work).
- :mod:`~tagtune.study.methods.llr`: large-loss rejection, LL-R (Kim et al. 2022).
- :mod:`~tagtune.study.methods.hill`: Hill loss (Zhang et al. 2021).
- :mod:`~tagtune.study.methods.splc`: self-paced loss correction, SPLC (Zhang et al. 2021).
- :mod:`~tagtune.study.methods.pbce`: normalised partial BCE (Durand et al. 2019).
- :mod:`~tagtune.study.methods.wan`: weak assume-negative, WAN (Cole et al. 2021).
- :mod:`~tagtune.study.methods.epr`: expected positive regularisation, EPR (Cole et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.lazy import F, torch

if TYPE_CHECKING:
    from torch import Tensor, nn

    from tagtune.study.config import TrainConfig

ALL = ("partial", "complete", "positives-only")
"""Every kind of observation (tagtune.study.data.core.OBSERVATIONS)."""
WITH_NEGATIVES = ("partial", "complete")
"""For a loss restricted to the observed labels: with positives-only labels (no observed
negative) it would learn that every tag is always present."""


@dataclass
class Batch:
    """One mini-batch, as tensors."""

    X: Tensor
    """(B, T, F) float32 frame embeddings."""
    Y: Tensor
    """(B, C) float32 labels, 0 where missing."""
    M: Tensor
    """(B, C) float32 observation mask (1 = observed); LE's student gets the enhanced mask."""


@dataclass
class MethodState:
    """What a step may read and change besides the batch."""

    model: nn.Module
    """The network being optimised (MT: the student)."""
    cfg: TrainConfig
    generator: torch.Generator
    """The dropout noise stream."""
    stage: str = "main"
    """``main``; LE: ``teacher`` (stage 1) or ``student`` (stage 2)."""
    teacher: nn.Module | None = None
    """MT: the EMA teacher."""
    progress: float = 0.0
    """Epochs completed in this stage, fractional within an epoch (MT's ramp-up)."""
    step: int = 0
    """Optimizer steps taken in this stage, the one just taken included (MT's EMA warm-up)."""
    positives_per_clip: float = 0.0
    """Mean number of observed positives per training clip (EPR's k by default)."""


def bce(p: Tensor, Y: Tensor) -> Tensor:
    """Binary cross-entropy on probabilities, mean over every entry."""
    return F.binary_cross_entropy(p, Y)


def masked_bce(p: Tensor, Y: Tensor, M: Tensor) -> Tensor:
    """Binary cross-entropy, mean over the entries where ``M`` is 1; 0 when none is.

    A masked entry contributes exactly 0 to the loss and to the gradient whatever its
    ``Y``: BCE's backward is finite (PyTorch clamps its denominator), times 0.
    """
    per_entry = F.binary_cross_entropy(p, Y, reduction="none")
    return (per_entry * M).sum() / M.sum().clamp_min(1.0)


# Last: the registry imports every method module, and each of them the names above.
from tagtune.study.methods.registry import (  # noqa: E402
    METHODS,
    Hooks,
    check_supported,
    get,
    hooks,
    shares_teacher,
    stages,
    supports,
)

__all__ = ["ALL", "METHODS", "WITH_NEGATIVES", "Batch", "Hooks", "MethodState", "bce", "check_supported",
           "get", "hooks", "masked_bce", "shares_teacher", "stages", "supports"]
