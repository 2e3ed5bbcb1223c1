"""EPR, expected positive regularisation (Cole et al., "Multi-Label Learning from Single Positive
Labels", CVPR 2021; code: elijahcole/single-positive-multi-label).

No assumption about the missing labels: only the observed ones enter the BCE, and a
regulariser pulls the batch's expected number of positives per clip toward k:

    loss = sum over observed entries of BCE / (B C) + (mean over clips of sum_c p_c - k)^2 / C^2.

The authors' observed labels were positives only; observed negatives here enter the BCE too.
Their k was each dataset's true mean number of positives per image; tagtune's default
(``epr_k: null``) is the mean number of observed positives per training clip -- all the data
can tell, and an underestimate where positives go missing too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.lazy import F
from tagtune.study.methods import ALL, Batch, MethodState
from tagtune.study.methods.declare import Bounds, Param

if TYPE_CHECKING:
    from torch import Tensor

NAME = "epr"
LABEL = "EPR"
SUMMARY = "ignored; BCE on the observed labels + (expected positives per clip - k)^2 / C^2"
SOURCE = "Cole et al., CVPR 2021"
ORDER = 10
OBSERVATIONS = ALL
EPR_K = Param("epr_k", float, None, "expected number of positives per clip (none: the mean number of "
              "observed positives per training clip)", Bounds(0, low_open=True), optional=True)


@dataclass(frozen=True)
class Params:
    """EPR's parameters: a run's ``TrainConfig.params`` (declared above, one field each)."""

    epr_k: float | None = EPR_K.field()


SEARCHED = ()


def epr_loss(p: Tensor, Y: Tensor, M: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """The loss and its regulariser term."""
    B, C = p.shape
    observed = (F.binary_cross_entropy(p, Y, reduction="none") * M).sum() / (B * C)
    regulariser = (p.sum(1).mean() - k) ** 2 / C**2
    return observed + regulariser, regulariser


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    p = state.model(batch.X, generator=state.generator)
    k = state.cfg.params.epr_k if state.cfg.params.epr_k is not None else state.positives_per_clip
    loss, regulariser = epr_loss(p, batch.Y, batch.M, k)
    return loss, {"train/epr_regulariser": regulariser.detach()}
