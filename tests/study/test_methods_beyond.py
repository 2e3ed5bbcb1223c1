"""The methods beyond the paper on hand-made inputs: each loss by hand, and the classic bugs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tagtune.study.config import METHODS, ConfigError, replace
from tagtune.study.data import positives_only
from tagtune.study.data.core import OBSERVATIONS
from tagtune.study.fit.train import fit
from tagtune.study.methods import (
    Batch,
    MethodState,
    check_supported,
    epr,
    get,
    hill,
    lemt,
    llr,
    masked_bce,
    mt,
    pbce,
    splc,
    stages,
    supports,
    wan,
)
from tagtune.study.nn.model import build_model
from tests.conftest import TINY_CONFIG

P = torch.tensor([[0.9, 0.2, 0.6], [0.5, 0.7, 0.1]])
Y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
M = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # missing: (0, 1), (1, 0), (1, 2)
TINY = replace(TINY_CONFIG, epochs=3)


def nl(x: float) -> float:
    return -math.log(x)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# --- LL-R ----------------------------------------------------------------------------------

def test_llr_rejects_the_largest_missing_losses_only():
    bce = [[nl(0.9), nl(0.8), nl(0.4)], [nl(0.5), nl(0.7), nl(0.9)]]
    # rate 1/6: k = 1 -> the largest missing loss, (1, 0) (-log 0.5), not the larger observed (0, 2)
    loss, out = llr.llr_loss(P, Y, M, 1 / 6)
    assert out.tolist() == [[False, False, False], [True, False, False]]
    kept = sum(map(sum, bce)) - bce[1][0]
    assert float(loss) == pytest.approx(kept / 6, rel=1e-6)  # mean over all B x C entries
    # k = 2: (1, 0) and (0, 1); rate 0: nothing; rate 1: only the 3 missing (never an observed one)
    assert llr.llr_loss(P, Y, M, 2 / 6)[1].sum() == 2 and llr.llr_loss(P, Y, M, 2 / 6)[1][0, 1]
    assert llr.llr_loss(P, Y, M, 0.0)[1].sum() == 0
    assert torch.equal(llr.llr_loss(P, Y, M, 1.0)[1], M == 0)


def test_llr_rejected_share_grows_by_delta_rel_each_epoch_after_the_first(tiny_dataset):
    r = fit(tiny_dataset, replace(TINY, method="llr", delta_rel=0.1))
    shares = [h["train/rejected_share"] for h in r.history]
    assert shares[0] == 0.0  # warm-up: the first epoch rejects nothing
    # batches of 16, 16 and 8 clips x 3 classes: ceil(n C rate) / (n C) in [rate, rate + 1/24)
    for epoch, share in enumerate(shares[1:], start=1):
        assert 0.1 * epoch <= share < 0.1 * epoch + 1 / 24
    assert llr.rejection_rate(30, 0.1) == 1.0


# --- Hill and SPLC -------------------------------------------------------------------------

def test_hill_loss_by_hand():
    def pos(p):
        q = sigmoid(logit(p) - 1.0)
        return (1 - q) ** 2 * nl(q)

    neg = [(1.5 - p) * p**2 for p in (0.2, 0.6, 0.5, 0.1)]
    expected = (pos(0.9) + pos(0.7) + sum(neg)) / 6
    assert float(hill.hill_loss(P, Y, 1.5, 1.0, 2.0)) == pytest.approx(expected, rel=1e-5)
    # The negative term saturates: a confident negative costs far less than BCE's -log(1 - p).
    assert float(hill.hill_loss(torch.tensor([[0.99]]), torch.tensor([[0.0]]), 1.5, 1.0, 2.0)) < 0.6


def test_splc_loss_by_hand_and_relabels_only_missing_entries():
    def pos(q):
        return (1 - q) ** 2 * nl(q)

    def neg(q):
        return q**2 * nl(1 - q)

    qpos = [sigmoid(logit(0.9) - 1.0), sigmoid(logit(0.7) - 1.0)]  # margin on given positives
    before = (pos(qpos[0]) + pos(qpos[1]) + sum(neg(q) for q in (0.2, 0.6, 0.5, 0.1))) / 6
    loss, new = splc.splc_loss(P, Y, M, False, 0.4, 1.0, 2.0)
    assert float(loss) == pytest.approx(before, rel=1e-5) and not new.any()
    # tau 0.4: the missing (1, 0) at 0.5 becomes a positive (no margin); the observed negative
    # (0, 2) at 0.6 stays a negative
    loss, new = splc.splc_loss(P, Y, M, True, 0.4, 1.0, 2.0)
    assert new.tolist() == [[False, False, False], [True, False, False]]
    after = before + (pos(0.5) - neg(0.5)) / 6
    assert float(loss) == pytest.approx(after, rel=1e-5)


def test_splc_relabels_from_its_second_epoch_on(tiny_dataset):
    r = fit(tiny_dataset, replace(TINY, method="splc", splc_tau=0.3))
    shares = [h["train/relabelled_share"] for h in r.history]
    assert shares[0] == 0.0 and all(s > 0 for s in shares[1:])
    batch = Batch(torch.randn(8, 4, 6), torch.zeros(8, 3), torch.zeros(8, 3))
    state = MethodState(build_model(6, 3, TINY.model, seed=0).train(),
                        replace(TINY, method="splc", splc_tau=0.01), torch.Generator().manual_seed(0))
    for progress, relabels in ((0.0, False), (0.99, False), (1.0, True), (2.5, True)):
        state.progress = progress
        assert (splc.step(batch, state)[1]["train/relabelled_share"] > 0) == relabels


# --- partial BCE, WAN, EPR -----------------------------------------------------------------

def test_partial_bce_normaliser_and_loss_by_hand():
    for gamma in (-1.0, 0.0, 1.0, 2.0):
        g = pbce.normaliser(torch.tensor([0.1, 1.0]), gamma)
        assert g.tolist() == pytest.approx([5.0, 1.0], rel=1e-6)
    assert float(pbce.normaliser(torch.tensor(0.5), 1e-12)) == pytest.approx(
        float(pbce.normaliser(torch.tensor(0.5), 1e-4)), rel=1e-3)  # gamma 0: the limit
    alpha, beta = -40 / 9, 49 / 9  # the paper's gamma = 1
    g1, g2 = alpha * 2 / 3 + beta, alpha * 1 / 3 + beta
    expected = (g1 * (nl(0.9) + nl(0.4)) / 3 + g2 * nl(0.7) / 3) / 2
    assert float(pbce.partial_bce(P, Y, M, 1.0)) == pytest.approx(expected, rel=1e-6)
    # complete labels: plain BCE; a clip with no observed label adds 0
    assert float(pbce.partial_bce(P, Y, torch.ones_like(M), 1.0)) == pytest.approx(
        float(F.binary_cross_entropy(P, Y)), rel=1e-6)
    none = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert float(pbce.partial_bce(P, Y, none, 1.0)) == pytest.approx(
        (alpha * 2 / 3 + beta) * (nl(0.9) + nl(0.4)) / 3 / 2, rel=1e-6)


def test_wan_weights_the_assumed_negatives_one_over_c_minus_one():
    observed = nl(0.9) + nl(0.4) + nl(0.7)
    assumed = (nl(0.8) + nl(0.5) + nl(0.9)) / 2  # C - 1 = 2
    assert float(wan.wan_loss(P, Y, M)) == pytest.approx((observed + assumed) / 6, rel=1e-6)


def test_epr_loss_by_hand_and_k_from_the_data():
    observed = (nl(0.9) + nl(0.4) + nl(0.7)) / 6
    expected_pos = ((0.9 + 0.2 + 0.6) + (0.5 + 0.7 + 0.1)) / 2  # 1.5 per clip
    loss, reg = epr.epr_loss(P, Y, M, 1.0)
    assert float(reg) == pytest.approx((expected_pos - 1.0) ** 2 / 9, rel=1e-6)
    assert float(loss) == pytest.approx(observed + (expected_pos - 1.0) ** 2 / 9, rel=1e-6)
    # no missing label enters the BCE: flipping one changes nothing
    flipped = torch.where(M > 0, Y, 1.0)
    assert torch.equal(epr.epr_loss(P, flipped, M, 1.0)[0], loss)
    batch = Batch(torch.randn(4, 4, 6), Y[:1].repeat(4, 1), M[:1].repeat(4, 1))
    model = build_model(6, 3, TINY.model, seed=0).train()
    for k, cfg_k in ((0.7, None), (2.0, 2.0)):  # epr_k null: the state's observed positives per clip
        state = MethodState(model, replace(TINY, method="epr", epr_k=cfg_k), torch.Generator().manual_seed(0),
                            positives_per_clip=0.7)
        loss, logs = epr.step(batch, state)
        p = model(batch.X, generator=torch.Generator().manual_seed(0))
        assert float(logs["train/epr_regulariser"]) == pytest.approx(
            float((p.detach().sum(1).mean() - k) ** 2 / 9), rel=1e-5)


# --- LE + MT -------------------------------------------------------------------------------

def _lemt_state(stage: str, beta: float = 3.0) -> MethodState:
    cfg = replace(TINY, method="lemt", beta=beta, alpha=0.9)
    model = build_model(6, 3, TINY.model, seed=0).train()
    return MethodState(model, cfg, torch.Generator().manual_seed(1), stage, mt.make_teacher(model).train())


def test_lemt_teacher_is_an_ema_and_its_consistency_moves_the_student():
    batch = Batch(torch.randn(8, 4, 6), (torch.rand(8, 3) < 0.3).float() * (torch.rand(8, 3) < 0.5),
                  torch.zeros(8, 3))
    grads = {}
    for beta in (0.0, 3.0):
        state = _lemt_state("teacher", beta)
        loss, logs = lemt.step(batch, state)
        assert float(logs["train/consistency"]) > 0
        loss.backward()
        grads[beta] = [p.grad.clone() for p in state.model.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(grads[0.0], grads[3.0], strict=True))
    # one optimizer step, then the EMA: the teacher moves toward the student, not onto it
    before = [p.clone() for p in state.teacher.parameters()]
    torch.optim.SGD(state.model.parameters(), lr=0.5).step()
    state.step = 1
    lemt.after_step(state)  # warm-up: alpha_1 = 1/2
    for t, t0, s in zip(state.teacher.parameters(), before, state.model.parameters(), strict=True):
        assert torch.allclose(t, 0.5 * t0 + 0.5 * s)
    assert any(not torch.equal(t, s) for t, s in zip(state.teacher.parameters(),
                                                      state.model.parameters(), strict=True))


def test_lemt_stage_one_is_b0_plus_consistency_stage_two_masked():
    batch = Batch(torch.randn(8, 4, 6), (torch.rand(8, 3) < 0.3).float(), (torch.rand(8, 3) < 0.5).float())
    batch.Y *= batch.M
    for stage, reference in (("teacher", lambda p: F.binary_cross_entropy(p, batch.Y)),
                             ("student", lambda p: masked_bce(p, batch.Y, batch.M))):
        state = _lemt_state(stage, beta=0.0)
        loss, _ = lemt.step(batch, state)
        with torch.no_grad():
            p = state.model(batch.X, generator=torch.Generator().manual_seed(1))
        assert float(loss.detach()) == pytest.approx(float(reference(p)), rel=1e-5)


def test_lemt_trains_both_stages_with_an_ema_teacher(tiny_dataset):
    r = fit(tiny_dataset, replace(TINY, method="lemt", epochs=2))
    assert [h["stage"] for h in r.history] == ["teacher"] * 2 + ["student"] * 2
    assert all(h["train/consistency"] > 0 and "val/loss_student" in h for h in r.history)
    assert 0.8 < r.history[-1]["le/masked_fraction"] < 1.0  # gamma 10
    assert r.other is not None and r.le_teacher is not None
    assert stages("lemt") == ("teacher", "student")


# --- what each method can learn from --------------------------------------------------------

def test_every_method_declares_what_it_learns_from(tiny_dataset):
    for method in METHODS:
        declared = get(method).OBSERVATIONS
        assert set(declared) <= set(OBSERVATIONS) and {"partial", "complete"} <= set(declared)
    refused = [m for m in METHODS if not supports(m, "positives-only")]
    assert refused == ["b1", "mt", "pbce"]  # their loss sees observed labels only
    with pytest.raises(ConfigError, match="^config: method: b1, pbce need observed negatives; "
                                          "positives-only data supports b0, le, lemt, llr"):
        check_supported(["b0", "b1", "pbce"], "positives-only")
    ds = positives_only(tiny_dataset)
    with pytest.raises(ConfigError, match="pbce need observed negatives"):
        fit(ds, replace(TINY, method="pbce"))
    for method in ("wan", "epr"):  # made for positives-only data
        assert len(fit(ds, replace(TINY, method=method, epochs=1)).history) == 1
