"""What every method module shares: a step's batch and state, the plain losses, the kinds of
observations. Its own module so that the package can import it before the registry, which
imports every method module (and they these names)."""

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


__all__ = ["ALL", "WITH_NEGATIVES", "Batch", "MethodState", "bce", "masked_bce"]
