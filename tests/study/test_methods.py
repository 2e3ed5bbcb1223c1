"""The methods' objectives on hand-made inputs: the classic bugs each would show."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tagtune.study.config import ModelConfig, TrainConfig, replace
from tagtune.study.methods import Batch, MethodState, b0, b1, le, masked_bce, mt
from tagtune.study.nn.model import build_model

P = torch.tensor([[0.9, 0.2], [0.5, 0.7]])
Y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
M = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
MODEL = ModelConfig(layers=2, hidden=8, dropout=0.5)


def _batch(seed: int = 0, n: int = 8, observed: float = 0.5) -> Batch:
    g = np.random.default_rng(seed)
    m = (g.random((n, 3)) < observed).astype(np.float32)
    y = (g.random((n, 3)) < 0.4).astype(np.float32) * m
    return Batch(torch.tensor(g.normal(size=(n, 4, 6)), dtype=torch.float32),
                 torch.tensor(y), torch.tensor(m))


def _state(cfg: TrainConfig = TrainConfig(), stage: str = "main", seed: int = 0) -> MethodState:
    model = build_model(6, 3, MODEL, seed=0).train()
    teacher = mt.make_teacher(model).train() if cfg.method == "mt" else None
    return MethodState(model, cfg, torch.Generator().manual_seed(seed), stage, teacher)


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


# --- B0 and B1 -----------------------------------------------------------------------------

def test_b0_and_b1_loss_values_by_hand():
    terms = [-math.log(0.9), -math.log(0.8), -math.log(0.5), -math.log(0.7)]
    b0_loss = float(torch.nn.functional.binary_cross_entropy(P, Y))
    assert b0_loss == pytest.approx(sum(terms) / 4, rel=1e-6)
    # B1: the missing entry (0, 1) is left out, the mean is over the 3 observed ones
    assert float(masked_bce(P, Y, M)) == pytest.approx((terms[0] + terms[2] + terms[3]) / 3, rel=1e-6)


def test_b1_ignores_a_missing_labels_value_entirely_loss_level():
    grads = []
    for missing_value in (0.0, 1.0, 0.3):
        p = P.clone().requires_grad_(True)
        y = torch.where(M > 0, Y, torch.tensor(missing_value))
        loss = masked_bce(p, y, M)
        loss.backward()
        grads.append((loss.detach(), p.grad))
    for loss, grad in grads[1:]:
        assert torch.equal(loss, grads[0][0]) and torch.equal(grad, grads[0][1])
    assert grads[0][1][0, 1] == 0  # no gradient at all on the missing entry


def test_b1_ignores_a_missing_labels_value_entirely_step_level():
    batch = _batch()
    flipped = Batch(batch.X, torch.where(batch.M > 0, batch.Y, 1.0), batch.M)
    results = []
    for b in (batch, flipped):
        state = _state()
        loss, _ = b1.step(b, state)
        loss.backward()
        results.append((loss.detach(), _grads(state.model)))
    assert torch.equal(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(g0, g1)
    # ... while B0 reads it: the same change moves B0's loss
    assert b0.step(batch, _state())[0] != b0.step(flipped, _state())[0]


def test_b1_batch_without_observed_labels_gives_zero_loss_and_no_nan():
    batch = _batch(observed=0.0)
    state = _state()
    loss, _ = b1.step(batch, state)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(g).all() and not g.any() for g in _grads(state.model))


# --- LE ------------------------------------------------------------------------------------

# class 0: clips 0-1 observed; clips 2-5 missing with scores 0.1, 0.5, 0.5 (a tie), 0.9
# class 1: every label observed; class 2: every label missing, all scores tied at 0.3
SCORES = np.array([[0.8, 0.1, 0.3], [0.2, 0.9, 0.3], [0.1, 0.4, 0.3],
                   [0.5, 0.6, 0.3], [0.5, 0.2, 0.3], [0.9, 0.7, 0.3]])
OBS = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=bool)
LABELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=float)


@pytest.mark.parametrize(("gamma", "kept0"), [
    (50, [True, False, False, False]),   # tau = 0.5: the tie at tau is masked with 0.9
    (80, [True, True, True, False]),     # tau = 0.66: only 0.9 is masked
    (25, [True, False, False, False]),   # tau = 0.4
    (0, [False, False, False, False]),   # B1's objective: every missing label masked
    (100, [True, True, True, True]),     # B0's objective: the maximum is not masked
])
def test_le_enhance_hand_made_scores_with_ties(gamma, kept0):
    enhanced = le.enhance(SCORES, LABELS, OBS, gamma)
    assert enhanced[:2, 0].all() and enhanced[:, 1].all()  # observed labels stay observed
    assert enhanced[2:, 0].tolist() == kept0
    # class 2: all scores tied at tau, so all masked -- except at gamma = 100
    assert enhanced[:, 2].all() == (gamma == 100) and enhanced[:, 2].any() == (gamma == 100)


def test_le_enhance_ends_and_input_checks():
    np.testing.assert_array_equal(le.enhance(SCORES, LABELS, OBS, 0), OBS)
    assert le.enhance(SCORES, LABELS, OBS, 100).all()
    with pytest.raises(ValueError, match="missing label"):
        le.enhance(SCORES, np.where(OBS, LABELS, 1), OBS, 50)
    with pytest.raises(ValueError, match="gamma"):
        le.enhance(SCORES, LABELS, OBS, 101)


def test_le_enhance_positives_only():
    positives = LABELS == 1
    enhanced = le.enhance(SCORES, LABELS, positives, 50)
    assert enhanced[positives].all()
    # per class, about half of the implicit negatives become explicit ones
    for c in range(2):  # (class 2's scores are all tied: all masked)
        missing = ~positives[:, c]
        assert 0 < enhanced[missing, c].sum() <= math.ceil(missing.sum() / 2)


@pytest.mark.parametrize(("gamma", "baseline"), [(100, b0), (0, b1)])
def test_le_student_objective_equals_the_baselines_at_the_ends(gamma, baseline):
    batch = _batch(seed=3)
    scores = np.random.default_rng(1).random(batch.Y.shape)
    enhanced = le.enhance(scores, batch.Y.numpy(), batch.M.numpy() > 0, gamma)
    student = Batch(batch.X, batch.Y, torch.tensor(enhanced, dtype=torch.float32))
    loss_le, _ = le.step(student, _state(stage="student"))
    loss_base, _ = baseline.step(batch, _state())
    torch.testing.assert_close(loss_le, loss_base, rtol=1e-6, atol=0)


def test_le_teacher_stage_is_b0():
    batch = _batch(seed=4)
    assert torch.equal(le.step(batch, _state(stage="teacher"))[0], b0.step(batch, _state())[0])


# --- MT ------------------------------------------------------------------------------------

MT = TrainConfig(method="mt", alpha=0.9, beta=3.0)


def _mt_update(cfg: TrainConfig, seed: int = 0):
    state = _state(cfg, seed=seed)
    opt = torch.optim.SGD(state.model.parameters(), lr=0.5)
    teacher0 = [p.clone() for p in state.teacher.parameters()]
    loss, logs = mt.step(_batch(seed=5), state)
    opt.zero_grad()
    loss.backward()
    grads = _grads(state.model)
    opt.step()
    state.step += 1
    mt.after_step(state)
    return state, teacher0, grads, logs


def test_mt_teacher_is_an_exact_copy_at_start_and_outside_autograd():
    state = _state(MT)
    for (k, s), t in zip(state.model.state_dict().items(), state.teacher.state_dict().values(),
                         strict=True):
        assert torch.equal(s, t), k
    assert not any(p.requires_grad for p in state.teacher.parameters())


def test_mt_ema_formula_after_one_step():
    for cfg, alpha_1 in ((MT, 0.5), (replace(MT, ema_warmup=False), MT.params.alpha)):
        state, teacher0, _, _ = _mt_update(cfg)
        changed = False
        for t0, t1, s1 in zip(teacher0, state.teacher.parameters(), state.model.parameters(),
                              strict=True):
            torch.testing.assert_close(t1, alpha_1 * t0 + (1 - alpha_1) * s1, rtol=1e-6, atol=1e-7)
            changed |= not torch.equal(t1, s1) and not torch.equal(t1, t0)
        assert changed  # the teacher moved, and is not the student
        assert all(p.grad is None for p in state.teacher.parameters())  # no grad reached it


def _mt_steps(cfg: TrainConfig, steps: int):
    """``steps`` SGD steps of MT; the student's parameters before the first and after each."""
    state = _state(cfg)
    opt = torch.optim.SGD(state.model.parameters(), lr=0.5)
    students = [[p.detach().clone() for p in state.model.parameters()]]
    teachers = []
    for t in range(1, steps + 1):
        loss, _ = mt.step(_batch(seed=t), state)
        opt.zero_grad()
        loss.backward()
        opt.step()
        state.step = t
        mt.after_step(state)
        students.append([p.detach().clone() for p in state.model.parameters()])
        teachers.append([p.detach().clone() for p in state.teacher.parameters()])
    return students, teachers


def test_mt_ema_warmup_teacher_is_the_running_mean_of_the_student():
    """alpha_t = min(1 - 1/(t + 1), alpha) with t counted from 1 (the paper's code and Tarvainen
    & Valpola's increment global_step before the update): after step t the teacher is the mean
    of the student's t + 1 weights theta_0 (the teacher's copy), ..., theta_t; then the EMA."""
    assert [mt.ema_decay(0.999, t, True) for t in (1, 2, 3)] == [0.5, 1 - 1 / 3, 0.75]
    assert mt.ema_decay(0.999, 999, True) == pytest.approx(0.999)
    assert mt.ema_decay(0.9, 50, True) == mt.ema_decay(0.9, 1, False) == 0.9
    students, teachers = _mt_steps(replace(MT, alpha=0.999), steps=6)
    for t, teacher in enumerate(teachers, start=1):
        for k, p in enumerate(teacher):
            mean = torch.stack([s[k] for s in students[: t + 1]]).mean(0)
            torch.testing.assert_close(p, mean, rtol=1e-5, atol=1e-6)
    first = [(s0 + s1) / 2 for s0, s1 in zip(students[0], students[1], strict=True)]
    assert all(torch.allclose(p, q, rtol=0, atol=1e-7) for p, q in zip(teachers[0], first, strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(teachers[0], students[1], strict=True))
    # Past the warm-up (alpha = 0.5 = alpha_1): the plain EMA from the first step.
    students, teachers = _mt_steps(replace(MT, alpha=0.5), steps=3)
    expected = students[0]
    for t in range(1, 4):
        expected = [0.5 * e + 0.5 * s for e, s in zip(expected, students[t], strict=True)]
        for p, q in zip(teachers[t - 1], expected, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_mt_without_warmup_alpha_is_constant():
    cfg = replace(MT, ema_warmup=False)
    alpha = cfg.params.alpha
    assert {mt.ema_decay(alpha, t, False) for t in (1, 2, 10, 10_000)} == {alpha}
    students, teachers = _mt_steps(cfg, steps=4)
    expected = students[0]
    for t in range(1, 5):
        expected = [alpha * e + (1 - alpha) * s for e, s in zip(expected, students[t], strict=True)]
        for p, q in zip(teachers[t - 1], expected, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_mt_teacher_batchnorm_statistics_are_its_own():
    """Step 1 runs both networks with equal weights; from step 2 on the teacher's running
    statistics follow its own (EMA) weights, not the student's."""
    state = _state(MT)
    opt = torch.optim.SGD(state.model.parameters(), lr=0.5)
    stats = []
    for seed in (5, 6):
        loss, _ = mt.step(_batch(seed=seed), state)
        opt.zero_grad()
        loss.backward()
        opt.step()
        state.step += 1
        mt.after_step(state)
        stats.append((state.teacher.bns[0].running_mean.clone(),
                      state.model.bns[0].running_mean.clone()))
    assert torch.equal(*stats[0])
    assert not torch.equal(stats[1][0], stats[0][0])  # updated by its own forward ...
    assert not torch.equal(*stats[1])  # ... on its own weights


def test_mt_consistency_is_nonzero_and_moves_the_student():
    _, _, grads_beta, logs = _mt_update(MT)
    _, _, grads_zero, _ = _mt_update(TrainConfig(method="mt", alpha=0.9, beta=0.0))
    assert float(logs["train/consistency"]) > 0  # dropout noise differs between the networks
    assert any(not torch.equal(a, b) for a, b in zip(grads_beta, grads_zero, strict=True))


def test_mt_loss_is_classification_plus_ramped_beta_times_consistency():
    cfg = TrainConfig(method="mt", beta=2.0, rampup_epochs=4)
    batch = _batch(seed=6)
    losses = {}
    for progress in (0.0, 2.0, 4.0, 9.0):
        state = _state(cfg)
        state.progress = progress
        loss, logs = mt.step(batch, state)
        losses[progress] = (loss.item(), logs["train/consistency"].item())
    # same init and noise seed: the classification term is the same at every progress
    classification = losses[4.0][0] - 2.0 * losses[4.0][1]
    for progress, (loss, consistency) in losses.items():
        weight = mt.rampup(progress, 4)
        assert loss == pytest.approx(classification + 2.0 * weight * consistency, rel=1e-5)
    assert mt.rampup(0.0, 4) == pytest.approx(math.exp(-5))
    assert mt.rampup(2.0, 4) == pytest.approx(math.exp(-1.25))
    assert mt.rampup(9.0, 4) == mt.rampup(0.0, 0) == 1.0
