"""LL-R, large-loss rejection (Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label
Classification", CVPR 2022; code: snucml/LargeLossMatters).

Missing labels are negatives, as in B0; but a missing label the network finds hard to call a
negative -- a large loss -- is likely a positive nobody annotated, and the network learns
clean labels before it memorises noisy ones. So, in every batch, the missing labels with the
largest BCE are left out of the loss, and the share left out grows during training:

    rate(e) = min((e - 1) * delta_rel, 1) in epoch e = 1, 2, ... of the stage,
    k = ceil(B * C * rate(e)) entries rejected per batch (a share of all B x C entries),

so the first epoch rejects nothing (the authors' warm-up: their ``clean_rate`` is 1 until the
first epoch ends). The rejected entries are the missing labels whose loss is at or above the
k-th largest loss among the batch's missing labels (their ``unobserved_loss < threshold``
keeps); observed labels, positive or negative, are never rejected. k is capped at the number
of missing labels in the batch: beyond it the authors' threshold falls to 0 and rejects every
entry, observed ones included. The loss is the mean over all B x C entries, a rejected one
counting 0, as their ``final_loss_matrix.mean()``. (Their LL-Ct/LL-Cp variants, which flip
the label instead, are not implemented.)

No state of its own: the rate follows from the epochs completed, which a checkpoint carries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.lazy import F, torch
from tagtune.study.methods import ALL, Batch, MethodState
from tagtune.study.methods.declare import Bounds, Param, Search

if TYPE_CHECKING:
    from torch import Tensor

NAME = "llr"
LABEL = "LL-R"
SUMMARY = ("a negative, but per batch the missing labels with the largest BCE are left out, a share "
           "growing by `delta_rel` each epoch")
SOURCE = "Kim et al., CVPR 2022"
ORDER = 5
OBSERVATIONS = ALL
DELTA_REL = Param("delta_rel", float, 0.002, "the share of a batch's (clip, class) entries rejected grows by "
                  "this every epoch after the first (Kim et al. 2022: 0.1-0.5%)", Bounds(0, 1),
                  search=Search(1e-4, 1e-2, log=True, bounds=Bounds(0, 1, low_open=True),
                                label="delta_rel (log scale)"))


@dataclass(frozen=True)
class Params:
    """LL-R's parameters: a run's ``TrainConfig.params`` (declared above, one field each)."""

    delta_rel: float = DELTA_REL.field()


SEARCHED = (DELTA_REL,)


def rejection_rate(epochs_done: int, delta_rel: float) -> float:
    """Share of a batch's entries to reject after ``epochs_done`` complete epochs."""
    return min(epochs_done * delta_rel, 1.0)


def rejected(loss: Tensor, missing: Tensor, rate: float) -> Tensor:
    """(B, C) bool: the missing entries whose loss is among the k = ceil(B C rate) largest."""
    B, C = loss.shape
    values = loss.detach()[missing]
    k = min(math.ceil(B * C * rate), values.numel())
    if k == 0:
        return torch.zeros_like(missing)
    threshold = torch.topk(values, k).values[-1]
    return missing & (loss.detach() >= threshold)


def llr_loss(p: Tensor, Y: Tensor, M: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """The loss and the (B, C) rejected mask, for clip probabilities ``p``."""
    per_entry = F.binary_cross_entropy(p, Y, reduction="none")
    out = rejected(per_entry, M == 0, rate)
    return torch.where(out, 0.0, per_entry).mean(), out


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    p = state.model(batch.X, generator=state.generator)
    rate = rejection_rate(int(state.progress), state.cfg.params.delta_rel)
    loss, out = llr_loss(p, batch.Y, batch.M, rate)
    return loss, {"train/rejected_share": out.float().mean()}
