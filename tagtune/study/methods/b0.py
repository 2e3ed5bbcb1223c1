"""B0: every missing label is a negative (Gururani & Lerch 2021, Sec. 3.1).

The usual practice on weakly labeled sets such as AudioSet: train with binary
cross-entropy over every (clip, class) entry. ``Split`` already stores 0 wherever a
label is missing, so missing labels enter the loss as negatives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tagtune.study.methods import ALL, Batch, MethodState, bce

if TYPE_CHECKING:
    from torch import Tensor

NAME = "b0"
LABEL = "B0"
SUMMARY = "treats it as a negative (BCE over every entry)"
SOURCE = "Gururani & Lerch 2021 (baseline)"
ORDER = 0
OBSERVATIONS = ALL
PARAMS = ()
SEARCHED = ()


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    p = state.model(batch.X, generator=state.generator)
    return bce(p, batch.Y), {}
