"""Hill loss (Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning with Missing
Labels", 2021; code: xinyu1205/robust-loss-mlml).

Missing labels are negatives, as in B0, but a negative's loss is the Hill-shaped

    L- = (lambda - p) p^2        (lambda = 1.5),

which, unlike BCE's -log(1 - p), stops growing for confident scores -- those are the likely
missing positives -- so they pull the network less. A positive's loss is the focal margin loss

    L+ = -(1 - p_m)^gamma log(p_m),   p_m = sigmoid(logit(p) - m)   (m = 1, gamma = 2).

Only ``Y`` is read: every non-positive entry, observed or missing, takes L-. The network
gives probabilities (attention pooling of frame probabilities), so the logit is log(p / (1 - p))
with p clipped to [1e-6, 1 - 1e-6]. The mean over entries, not the authors' sum: the loss keeps
BCE's scale, so the learning rates of the other methods carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.lazy import F, torch
from tagtune.study.methods import ALL, Batch, MethodState
from tagtune.study.methods.declare import Bounds, Param, Search

if TYPE_CHECKING:
    from torch import Tensor

NAME = "hill"
LABEL = "Hill"
SUMMARY = "a negative under the saturating loss (lambda - p) p^2; focal margin loss on positives"
SOURCE = "Zhang et al. 2021"
ORDER = 6
OBSERVATIONS = ALL
HILL_LAMBDA = Param("hill_lambda", float, 1.5, "lambda of the negative term (lambda - p) p^2 (the authors': "
                    "1.5)", Bounds(1))
MARGIN = Param("margin", float, 1.0, "margin m subtracted from a positive's logit in the focal margin loss "
               "(the authors': 1)", Bounds(0), search=Search(0.5, 1.0))
FOCAL_GAMMA = Param("focal_gamma", float, 2.0, "focusing exponent of the focal margin loss (the authors': 2)",
                    Bounds(0))


@dataclass(frozen=True)
class Params:
    """Hill's parameters: a run's ``TrainConfig.params`` (declared above, one field each)."""

    hill_lambda: float = HILL_LAMBDA.field()
    margin: float = MARGIN.field()
    focal_gamma: float = FOCAL_GAMMA.field()


SEARCHED = (MARGIN,)  # lambda and gamma as the authors left them
EPS = 1e-6
"""Clip of p before its logit."""


def focal_margin_positive(p: Tensor, margin: float, gamma: float) -> Tensor:
    """-(1 - p_m)^gamma log p_m per entry, p_m = sigmoid(logit(p) - margin)."""
    z = torch.logit(p, eps=EPS) - margin
    return -((1.0 - torch.sigmoid(z)) ** gamma) * F.logsigmoid(z)


def hill_loss(p: Tensor, Y: Tensor, lam: float, margin: float, gamma: float) -> Tensor:
    """Mean over entries of L+ where Y = 1, L- = (lambda - p) p^2 elsewhere."""
    positive = focal_margin_positive(p, margin, gamma)
    negative = (lam - p) * p**2
    return torch.where(Y > 0, positive, negative).mean()


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    cfg = state.cfg
    p = state.model(batch.X, generator=state.generator)
    return hill_loss(p, batch.Y, cfg.params.hill_lambda, cfg.params.margin, cfg.params.focal_gamma), {}
