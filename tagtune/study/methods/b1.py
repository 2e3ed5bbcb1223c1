"""B1: the loss is masked to the observed labels (Gururani & Lerch 2021, Sec. 3.1).

Binary cross-entropy averaged over the observed entries of the batch only; a missing
label contributes nothing, whatever value it holds. A batch with no observed entry
has loss 0 (no gradient, no NaN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tagtune.study.methods import WITH_NEGATIVES, Batch, MethodState, masked_bce

if TYPE_CHECKING:
    from torch import Tensor

NAME = "b1"
LABEL = "B1"
SUMMARY = "ignores it (BCE over observed entries only)"
SOURCE = "Gururani & Lerch 2021 (baseline)"
ORDER = 1
OBSERVATIONS = WITH_NEGATIVES
PARAMS = ()
SEARCHED = ()


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    p = state.model(batch.X, generator=state.generator)
    return masked_bce(p, batch.Y, batch.M), {}
