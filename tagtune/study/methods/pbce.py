"""Normalised partial BCE (Durand, Mehrasa & Mori, "Learning a Deep ConvNet for Multi-label
Classification with Partial Labels", CVPR 2019).

BCE over the observed labels only, as B1, but normalised per clip by the proportion p_y of
its labels that are observed, not by their count:

    loss(clip) = g(p_y) / C * sum over observed c of BCE_c,   g(p_y) = alpha p_y^gamma + beta,

with alpha and beta fixed by g(1) = 1 (a fully labelled clip is plain BCE) and g(0.1) = 5, as
in the paper, which found gamma = 1 best: alpha = -40/9, beta = 49/9. gamma = 0 is the limit
g = 1 + 4 ln(p_y) / ln(0.1). A clip with no observed label contributes 0. The batch loss is
the mean over clips. Needs observed negatives, like B1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.lazy import F, torch
from tagtune.study.methods import WITH_NEGATIVES, Batch, MethodState
from tagtune.study.methods.declare import Bounds, Param, Search

if TYPE_CHECKING:
    from torch import Tensor

NAME = "pbce"
LABEL = "Partial BCE"
SUMMARY = "ignored; each clip's BCE scaled by its share of observed labels"
SOURCE = "Durand, Mehrasa & Mori, CVPR 2019"
ORDER = 8
OBSERVATIONS = WITH_NEGATIVES
PBCE_GAMMA = Param("pbce_gamma", float, 1.0, "exponent of g(p) = alpha p^gamma + beta, alpha and beta set by "
                   "g(0.1) = 5 and g(1) = 1 (Durand et al. 2019: 1)", Bounds(),
                   search=Search(-1.0, 3.0, label="gamma"))


@dataclass(frozen=True)
class Params:
    """Partial BCE's parameters: a run's ``TrainConfig.params`` (declared above, one field each)."""

    pbce_gamma: float = PBCE_GAMMA.field()


SEARCHED = (PBCE_GAMMA,)
G_AT_TENTH = 5.0
"""g(0.1): the paper's weight of a clip with 10% of its labels (g(1) = 1)."""


def normaliser(p_y: Tensor, gamma: float) -> Tensor:
    """g(p_y) = alpha p_y^gamma + beta with g(1) = 1 and g(0.1) = 5, for p_y in (0, 1]."""
    if abs(gamma) < 1e-9:
        return 1.0 + (G_AT_TENTH - 1.0) * torch.log(p_y) / math.log(0.1)
    alpha = (G_AT_TENTH - 1.0) / (0.1**gamma - 1.0)
    return alpha * p_y**gamma + (1.0 - alpha)


def partial_bce(p: Tensor, Y: Tensor, M: Tensor, gamma: float) -> Tensor:
    """Mean over clips of g(p_y) / C times the BCE summed over the clip's observed labels."""
    C = p.shape[1]
    summed = (F.binary_cross_entropy(p, Y, reduction="none") * M).sum(1)
    p_y = M.sum(1) / C
    g = torch.where(p_y > 0, normaliser(p_y.clamp_min(1.0 / C), gamma), 0.0)
    return (g * summed / C).mean()


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    p = state.model(batch.X, generator=state.generator)
    return partial_bce(p, batch.Y, batch.M, state.cfg.params.pbce_gamma), {}
