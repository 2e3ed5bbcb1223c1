"""LE + MT: label enhancing with mean-teacher consistency in both stages -- the future work of
Gururani & Lerch (2021, Sec. 6), built from :mod:`~tagtune.study.methods.le` and
:mod:`~tagtune.study.methods.mt`.

Two stages, as LE. Stage 1 (``teacher``: LE's teacher, not MT's) trains a student with B0's
loss -- every missing label a negative -- plus beta(t) times MT's consistency with an EMA
teacher of it; the network selected at the end of the stage (``mt_select``: the EMA teacher
by default) scores the missing labels, and LE's gamma-percentile rule masks the suspect ones.
Stage 2 (``student``) trains a fresh student and a fresh EMA teacher (its copy) with the
masked BCE on the enhanced labels plus the consistency term: MT's step on LE's labels.

Everything MT does carries over per stage: the EMA and its warm-up (``ema_warmup``; the step
count restarts with each stage's fresh teacher), beta's ramp-up, both networks validated and
the other one logged under a suffix. Hyperparameters: gamma, alpha, beta.

In a study the stage-1 network is not shared between trials (LE's is, through
tagtune.study.fit.teachers): it depends on alpha and beta, which the trials search. Its lr is
``le_teacher_lr`` where set (a study sets it, as for LE), else ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.lazy import torch
from tagtune.study.methods import ALL, Batch, MethodState, le, mt

if TYPE_CHECKING:
    from torch import Tensor

NAME = "lemt"
LABEL = "LE+MT"
SUMMARY = "LE with MT's EMA-teacher consistency in both stages"
SOURCE = "Gururani & Lerch 2021, its future work"
ORDER = 4
OBSERVATIONS = ALL


@dataclass(frozen=True)
class Params(mt.Params, le.Params):  # fields in reverse order of the bases: LE's, then MT's
    """LE+MT's parameters: LE's and MT's (their declarations, not copies)."""


SEARCHED = le.SEARCHED + mt.SEARCHED

# LE's stages, boundary and teacher lr; MT's EMA teacher, selection and update, in each stage.
STAGES = le.STAGES
begin_stage, stage_lr = le.begin_stage, le.stage_lr
make_teacher, networks, other_suffix = mt.make_teacher, mt.networks, mt.other_suffix
after_step = mt.after_step


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    """MT's step; in stage 1 on B0's targets (every entry observed, missing labels as 0)."""
    if state.stage == "teacher":
        batch = Batch(batch.X, batch.Y, torch.ones_like(batch.M))
    return mt.step(batch, state)
