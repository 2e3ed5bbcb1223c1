"""LE, label enhancing (Fonseca et al. 2020; Gururani & Lerch 2021, Sec. 3.2).

Stage 1 (``teacher``) trains a network as B0: missing labels are negatives. Its
scores then sort the missing labels of each class c: those at or above tau_c, the
gamma-th percentile of the teacher's scores on class c's missing training labels,
look like hidden positives and are masked out; every other missing label becomes an
explicit negative. Stage 2 (``student``) trains a fresh network -- new weights, new
optimizer, the initial learning rate -- with the masked loss on the enhanced labels.

The two ends are the two baselines, exactly: gamma = 100 masks nothing (every
missing label is a negative: B0's objective); gamma = 0 masks every missing label
(B1's objective). For 0 <= gamma < 100 ties at tau_c are masked: a score equal to
the threshold is as suspect as one above it. (The paper's code, with a prune count
of 0, masked every missing label instead of none: an off-by-one on ``[-0:]``.)

Only the Split is read: a missing label's value is not stored anywhere, so LE cannot
peek at labels removed to simulate missing ones (the paper's SONYC code could).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tagtune.study.configbase import PRESETS
from tagtune.study.errors import ConfigError
from tagtune.study.lazy import torch
from tagtune.study.methods import ALL, Batch, MethodState, b0, b1
from tagtune.study.methods.declare import Bounds, Param, Search

if TYPE_CHECKING:
    from torch import Tensor, nn

    from tagtune.study.config import TrainConfig
    from tagtune.study.fit.checkpoint import FitState

NAME = "le"
LABEL = "LE"
SUMMARY = ("label enhancing: a B0 teacher scores the missing labels; per class, those at or above the "
           "gamma-th percentile are masked, the rest become negatives; a fresh student trains on that")
SOURCE = "Fonseca et al. 2020; Gururani & Lerch 2021"
ORDER = 2
OBSERVATIONS = ALL
GAMMA = Param("gamma", float, PRESETS["openmic"]["gamma"], "percentile (0-100) of the teacher's scores on "
              "the missing labels at or above which they are masked", Bounds(0, 100),
              search=Search(1.0, 99.0, label="gamma (percentile, 0–100)"))
LE_TEACHER_LR = Param("le_teacher_lr", float, None, "the stage-1 teacher's initial lr (none: lr); a study "
                      "fixes it so that the trials of a cell share one teacher", Bounds(0, low_open=True),
                      optional=True)


@dataclass(frozen=True)
class Params:
    """LE's parameters: a run's ``TrainConfig.params`` (declared above, one field each)."""

    gamma: float = GAMMA.field()
    le_teacher_lr: float | None = LE_TEACHER_LR.field()


SEARCHED = (GAMMA,)

STAGES = ("teacher", "student")
SHARED_TEACHER = True
TEACHER_LR = 1e-3
"""The shared teacher's Adam lr, a study's ``le_teacher_lr``: the paper's, for every method (its
public code's hparams)."""
"""Stage 1 can be given to the fit (a B0 fit's model): a study's trials share it
(tagtune.study.fit.teachers)."""


def enhance(scores: np.ndarray, Y: np.ndarray, M: np.ndarray, gamma: float) -> np.ndarray:
    """The enhanced observation mask (N, C) bool: ``M`` plus the missing labels kept as negatives.

    ``scores``: the teacher's clip probabilities on the training clips; ``Y``: the labels,
    0 wherever ``M`` is False (they become the explicit negatives).
    """
    scores, Y, M = np.asarray(scores), np.asarray(Y), np.asarray(M, dtype=bool)
    if not scores.shape == Y.shape == M.shape:
        raise ValueError(f"shapes differ: scores {scores.shape}, Y {Y.shape}, M {M.shape}")
    if (Y[~M] != 0).any():
        raise ValueError("a missing label holds a non-zero value; it cannot become a negative")
    problem = GAMMA.problem(gamma)  # the one check of gamma, as the config makes it
    if problem is not None:
        raise ConfigError("gamma", problem)
    enhanced = M.copy()
    for c in range(M.shape[1]):
        missing = ~M[:, c]
        if not missing.any():
            continue
        s = scores[missing, c]
        if gamma == 100.0:
            enhanced[missing, c] = True  # the top 0% is nothing, not the maximum
        else:
            tau = np.percentile(s, gamma)
            enhanced[missing, c] = s < tau
    return enhanced


def enhanced_mask(teacher: nn.Module, X: Tensor, Y: Tensor, M: Tensor,
                  gamma: float) -> tuple[Tensor, float]:
    """The student's (N, C) float training mask, and the fraction of missing labels masked."""
    from tagtune.study.nn.model import predict  # the network (torch) only when a stage ends

    observed = M.numpy() > 0
    enhanced = enhance(predict(teacher, X), Y.numpy(), observed, gamma)
    n_missing = int((~observed).sum())
    masked = int((~enhanced).sum())
    return torch.from_numpy(enhanced.astype(np.float32)), masked / n_missing if n_missing else 0.0


def stage_lr(cfg: TrainConfig, stage: str) -> float:
    """The stage's initial lr: ``le_teacher_lr`` for the teacher where set, else ``lr`` (the student
    always starts at ``lr``, fresh)."""
    return cfg.params.le_teacher_lr if stage == "teacher" and cfg.params.le_teacher_lr is not None else cfg.lr


def begin_stage(fs: FitState, teacher: dict[str, Tensor], train: Any, cfg: TrainConfig) -> None:
    """The student's stage begins: the selected stage-1 ``teacher`` (a state dict) scores the training
    clips (``train``: their X, Y, M tensors), and the enhanced mask becomes ``fs``'s training mask."""
    fs.method["le_teacher"] = teacher  # FitResult.le_teacher: reusable by another LE fit
    net = copy.deepcopy(fs.model)
    net.load_state_dict(teacher)
    M, masked = enhanced_mask(net.eval(), train.X, train.Y.cpu(), train.M.cpu(), cfg.params.gamma)
    fs.train_M = M.to(train.X.device)
    fs.method_logs["le/masked_fraction"] = masked


def step(batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]:
    """Stage 1 is B0; stage 2 is B1 on the enhanced mask, which ``begin_stage`` put in ``batch.M``."""
    if state.stage == "teacher":
        return b0.step(batch, state)
    return b1.step(batch, state)
