"""MT, mean teacher (Tarvainen & Valpola 2017; Gururani & Lerch 2021, Sec. 3.3).

Two networks of one architecture. The student is trained on

    loss = masked BCE(student) + beta(t) * MSE(student clip probs, teacher clip probs)

where the consistency term covers every (clip, class) entry, observed or not: that is
how the missing labels take part. Both networks run in train mode, each with its own
dropout noise (drawn one after the other from the run's noise stream); no gradient
reaches the teacher. After every optimizer step the teacher's weights follow the
student's as an exponential moving average, theta' <- alpha_t*theta' + (1-alpha_t)*theta,
with the warm-up of the paper's code and of Tarvainen & Valpola's: at optimizer step
t = 1, 2, ... (counted before the update, as their ``global_step += 1`` precedes it),
alpha_t = min(1 - 1/(t + 1), alpha). So alpha_1 = 1/2 and the teacher after t steps is
the plain mean of the student's t + 1 weights theta_0 (its copy at the start), theta_1,
..., theta_t, until 1 - 1/(t + 1) reaches alpha (t = 999 for 0.999); from there on the
usual EMA. Without it (``ema_warmup: false``) alpha_t = alpha from the first step, and after
1,000 steps at 0.999 37% of the teacher is still the initial network.

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
- Selection, evaluation and export use the teacher (``mt_select: teacher``) or the student
  (``student``: what the paper's code reported, its saved "best teacher" being a copy of
  the student); the fit loop logs the other network's metrics too, with a suffix.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tagtune.study.configbase import PRESETS
from tagtune.study.lazy import F, torch
from tagtune.study.methods import WITH_NEGATIVES, Batch, MethodState, masked_bce
from tagtune.study.methods.declare import Bounds, Param, Search

if TYPE_CHECKING:
    from torch import Tensor, nn

    from tagtune.study.config import TrainConfig

NAME = "mt"
LABEL = "MT"
SUMMARY = ("mean teacher: teacher = EMA of the student (alpha, warmed up as the paper's code does); loss = "
           "masked BCE + beta x MSE(student, teacher)")
SOURCE = "Tarvainen & Valpola 2017; Gururani & Lerch 2021"
ORDER = 3
OBSERVATIONS = WITH_NEGATIVES
ALPHA = Param("alpha", float, PRESETS["openmic"]["alpha"],
              "EMA decay of the teacher, theta' = alpha theta' + (1 - alpha) theta",
              Bounds(0, 1, high_open=True),
              # searched on a log scale of its distance to 1: 0.9, 0.99, 0.999 equally far apart
              search=Search(1e-4, 1e-1, log=True, name="one_minus_alpha", complement=True,
                            bounds=Bounds(0, 1, low_open=True), label="1 − alpha (EMA decay; log scale)"))
BETA = Param("beta", float, PRESETS["openmic"]["beta"], "weight of the consistency loss", Bounds(0),
             search=Search(0.0, 10.0, label="beta (consistency weight)"))
RAMPUP_EPOCHS = Param("rampup_epochs", int, 0, "sigmoid ramp-up length of beta in epochs (0: constant beta, "
                      "the paper)", Bounds(0))
EMA_WARMUP = Param("ema_warmup", bool, True, "EMA decay min(1 - 1/(t + 1), alpha) at optimizer step t (the "
                   "paper's code): the early teacher is the running mean of the student")
MT_SELECT = Param("mt_select", str, "teacher", "the network selected (by its own validation loss), evaluated "
                  "and exported (the paper's code reported the student)",
                  choices=("teacher", "student"))


@dataclass(frozen=True)
class Params:
    """MT's parameters: a run's ``TrainConfig.params`` (declared above, one field each)."""

    alpha: float = ALPHA.field()
    beta: float = BETA.field()
    rampup_epochs: int = RAMPUP_EPOCHS.field()
    ema_warmup: bool = EMA_WARMUP.field()
    mt_select: str = MT_SELECT.field()


SEARCHED = (ALPHA, BETA)


def make_teacher(student: nn.Module) -> nn.Module:
    """The teacher at the start: an exact copy of the student, outside autograd."""
    return copy.deepcopy(student).requires_grad_(False)


def networks(student: nn.Module, teacher: nn.Module, cfg: TrainConfig) -> tuple:
    """(selected, other): the teacher and the student, or the other way round (``mt_select``)."""
    return (student, teacher) if cfg.params.mt_select == "student" else (teacher, student)


def other_suffix(cfg: TrainConfig) -> str:
    """The suffix of the other network's metric names: ``val/loss_student`` (or ``_teacher``)."""
    return "_teacher" if cfg.params.mt_select == "student" else "_student"


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
    beta = state.cfg.params.beta * rampup(state.progress, state.cfg.params.rampup_epochs)
    return classification + beta * consistency, {"train/consistency": consistency.detach()}


def ema_decay(alpha: float, step: int, warmup: bool) -> float:
    """alpha_t of optimizer step ``step`` (1-based): min(1 - 1/(t + 1), alpha), or alpha."""
    return min(1.0 - 1.0 / (step + 1), alpha) if warmup else alpha


def after_step(state: MethodState) -> None:
    """theta' <- alpha_t * theta' + (1 - alpha_t) * theta, for every parameter."""
    teacher = list(state.teacher.parameters())
    student = list(state.model.parameters())
    alpha_t = ema_decay(state.cfg.params.alpha, state.step, state.cfg.params.ema_warmup)
    with torch.no_grad():  # not a decorator: torch is imported on first use (tagtune.study.lazy)
        torch._foreach_lerp_(teacher, student, 1.0 - alpha_t)
