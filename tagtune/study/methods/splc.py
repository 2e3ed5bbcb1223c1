"""SPLC, self-paced loss correction (Zhang et al., "Simple and Robust Loss Design for Multi-Label
Learning with Missing Labels", 2021; code: xinyu1205/robust-loss-mlml).

A focal margin loss in which, from the second epoch of the stage on, a missing label that
the network scores above tau is taken for a positive -- in every batch, from the current
scores (nothing is stored: the relabelling is redone on the fly, as in the authors' code,
whose ``epoch >= change_epoch`` with epochs counted from 0 and change_epoch 1 skips the first
epoch, where few missing labels are recalled with high precision). Per entry, z = logit(p),
shifted by the margin m where the label is a given positive, q = sigmoid(z), t the target
after relabelling:

    L = -(t (1 - q)^gamma log q + (1 - t) q^gamma log(1 - q))     (tau 0.6, m 1, gamma 2).

Only missing labels are relabelled (``M == 0``): an observed negative stays a negative
whatever its score (the authors' data had no observed negatives). A relabelled entry takes
the positive term without the margin, as in their code (the margin shifts given positives
only). Mean over entries (their sum): see :mod:`~tagtune.study.methods.hill`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.lazy import F, torch
from tagtune.study.methods import ALL, Batch, MethodState
from tagtune.study.methods.declare import Bounds, Param, Search
from tagtune.study.methods.hill import EPS, FOCAL_GAMMA, MARGIN

if TYPE_CHECKING:
    from torch import Tensor

NAME = "splc"
LABEL = "SPLC"
SUMMARY = ("focal margin loss; from the second epoch on, a missing label scored above tau counts as a "
           "positive")
SOURCE = "Zhang et al. 2021"
ORDER = 7
OBSERVATIONS = ALL
SPLC_TAU = Param("splc_tau", float, 0.6, "a missing label scored above tau counts as a positive from the "
                 "second epoch on (the authors': 0.6)", Bounds(0, 1, low_open=True, high_open=True),
                 search=Search(0.5, 0.95, label="tau"))


@dataclass(frozen=True)
class Params:
    """SPLC's parameters: a run's ``TrainConfig.params`` (declared above, one field each)."""

    splc_tau: float = SPLC_TAU.field()
    margin: float = MARGIN.field()
    focal_gamma: float = FOCAL_GAMMA.field()


SEARCHED = (SPLC_TAU,)


def splc_loss(p: Tensor, Y: Tensor, M: Tensor, relabel: bool, tau: float, margin: float,
              gamma: float) -> tuple[Tensor, Tensor]:
    """The loss and the (B, C) bool mask of the missing labels taken for positives."""
    z = torch.logit(p, eps=EPS)
    z = torch.where(Y > 0, z - margin, z)
    q = torch.sigmoid(z)
    new = (M == 0) & (q.detach() > tau) if relabel else torch.zeros_like(Y, dtype=torch.bool)
    t = torch.where(new, 1.0, Y)
    pos = (1.0 - q) ** gamma * F.logsigmoid(z)
    neg = q**gamma * F.logsigmoid(-z)
    return -(t * pos + (1.0 - t) * neg).mean(), new


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    params = state.cfg.params
    p = state.model(batch.X, generator=state.generator)
    relabel = int(state.progress) >= 1  # epochs completed in this stage
    loss, new = splc_loss(p, batch.Y, batch.M, relabel, params.splc_tau, params.margin, params.focal_gamma)
    missing = (batch.M == 0).sum().clamp_min(1)
    return loss, {"train/relabelled_share": new.sum() / missing}
