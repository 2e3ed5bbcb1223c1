"""WAN, weak assume-negative (Cole et al., "Multi-Label Learning from Single Positive Labels",
CVPR 2021; code: elijahcole/single-positive-multi-label).

Missing labels are negatives, as in B0, but each weighs 1 / (C - 1) in the loss: with one
positive known per clip, about C - 1 entries are assumed negatives, and down-weighting them
keeps the few true positives among them from drowning the known positives. Observed labels,
positive or negative, weigh 1 (the authors' data had no observed negatives). The loss is the
sum over entries divided by B x C, as the authors' ``loss_mtx / (num_classes * batch_size)``.
Made for positives-only data (AudioSet style), where B1 and MT cannot run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tagtune.study.lazy import F, torch
from tagtune.study.methods import ALL, Batch, MethodState

if TYPE_CHECKING:
    from torch import Tensor

NAME = "wan"
LABEL = "WAN"
SUMMARY = "a negative weighted 1 / (C - 1)"
SOURCE = "Cole et al., CVPR 2021"
ORDER = 9
OBSERVATIONS = ALL
PARAMS = ()
SEARCHED = ()


def wan_loss(p: Tensor, Y: Tensor, M: Tensor) -> Tensor:
    """Mean over entries of BCE, the missing labels' (negatives) weighted 1 / (C - 1)."""
    C = p.shape[1]
    weight = torch.where(M > 0, 1.0, 1.0 / max(C - 1, 1))
    return (F.binary_cross_entropy(p, Y, reduction="none") * weight).mean()


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    p = state.model(batch.X, generator=state.generator)
    return wan_loss(p, batch.Y, batch.M), {}
