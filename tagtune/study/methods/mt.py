"""MT, mean teacher (Tarvainen & Valpola 2017; Gururani & Lerch 2021, Sec. 3.3).

Two networks of one architecture. The student is trained on

    loss = masked BCE(student) + beta(t) * MSE(student clip probs, teacher clip probs)

where the consistency term covers every (clip, class) entry, observed or not: that is
how the missing labels take part. Both networks run in train mode, each with its own
dropout noise (drawn one after the other from the run's noise stream); no gradient
reaches the teacher. After every optimizer step the teacher's weights follow the
student's as an exponential moving average, theta' <- alpha*theta' + (1-alpha)*theta.

Choices (and the paper's code's faults not repeated):
- The teacher starts as an exact copy of the student (:func:`make_teacher`), not as
  a separately initialised network.
- BatchNorm running statistics: the EMA covers the parameters only; the teacher's
  running mean/var are its own, updated by its own train-mode forward pass on every
  batch, as in Tarvainen & Valpola's reference code. They thus estimate the
  statistics of the teacher's activations under the teacher's weights -- what its
  eval-mode normalisation needs -- which copying or averaging the student's would not.
- beta(t) = beta * exp(-5 (1 - t)^2), t = epochs done / ``rampup_epochs`` clipped to 1,
  in fractions of an epoch (the sigmoid ramp-up of Laine & Aila 2017); constant beta
  when ``rampup_epochs`` is 0, as in the paper.
- The teacher is what model selection, evaluation and export use; the fit loop also
  reports the student's validation metrics.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tagtune.study.methods import Batch, MethodState, masked_bce


def make_teacher(student: nn.Module) -> nn.Module:
    """The teacher at the start: an exact copy of the student, outside autograd."""
    return copy.deepcopy(student).requires_grad_(False)


def rampup(progress: float, rampup_epochs: int) -> float:
    """Weight in [0, 1] of the consistency term after ``progress`` epochs."""
    if rampup_epochs == 0:
        return 1.0
    t = min(progress / rampup_epochs, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    p_student = state.model(batch.X, generator=state.generator)
    with torch.no_grad():
        p_teacher = state.teacher(batch.X, generator=state.generator)
    classification = masked_bce(p_student, batch.Y, batch.M)
    consistency = F.mse_loss(p_student, p_teacher)
    beta = state.cfg.beta * rampup(state.progress, state.cfg.rampup_epochs)
    return classification + beta * consistency, {"train/consistency": consistency.detach()}


@torch.no_grad()
def after_step(state: MethodState) -> None:
    """theta' <- alpha * theta' + (1 - alpha) * theta, for every parameter."""
    teacher = list(state.teacher.parameters())
    student = list(state.model.parameters())
    torch._foreach_lerp_(teacher, student, 1.0 - state.cfg.alpha)
