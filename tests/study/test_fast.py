"""Fast primitives: the dropout mask's distribution, FlatAdam against torch's Adam, the fused
train-mode forward/backward against the model as written, and training results that are
statistically those of a conventional loop (bench/conventional.py)."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from tagtune.study.config import ModelConfig, TrainConfig
from tagtune.study.data import Dataset, Split
from tagtune.study.fit.train import fit
from tagtune.study.nn import fast
from tagtune.study.nn.model import build_model, dropout
from tests.conftest import bench_module

PAPER = ModelConfig(arch="paper")  # the paper's OpenMIC network: L = 3, H = F = 128


def _binomial_ok(kept: int, n: int, rate: float, z: float = 5.0) -> bool:
    return abs(kept - n * rate) <= z * math.sqrt(n * rate * (1 - rate))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.6, 0.9])
def test_keep_rate_is_binomial_in_every_16_bit_lane(p):
    k = fast.keep_probability(p)
    assert abs(k - (1 - p)) <= 2.0**-17
    m = fast.keep_mask((100_000, 4), p, torch.Generator().manual_seed(1))
    kept = (m > 0).sum(0)  # column j = lane j of each 64-bit word (a biased lane shows here)
    assert all(_binomial_ok(int(c), 100_000, k) for c in kept)
    assert _binomial_ok(int(kept.sum()), 400_000, k)


def test_mask_values_are_zero_or_the_inverse_keep_rate():
    m = fast.keep_mask((64, 33), 0.6, torch.Generator().manual_seed(0))
    assert m.dtype == torch.float32 and m.shape == (64, 33)
    assert set(m.unique().tolist()) == {0.0, float(torch.tensor(1 / 0.4))}


def test_masks_are_independent_across_elements_lanes_and_calls():
    g = torch.Generator().manual_seed(2)
    a = (fast.keep_mask((200_000,), 0.6, g) > 0).double().numpy()
    b = (fast.keep_mask((200_000,), 0.6, g) > 0).double().numpy()
    bound = 5 / math.sqrt(len(a))
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < bound  # neighbours (lanes of one word)
    assert abs(np.corrcoef(a[:-4], a[4:])[0, 1]) < bound  # same lane, consecutive words
    assert abs(np.corrcoef(a, b)[0, 1]) < bound  # successive calls
    assert not np.array_equal(a, b)


def test_masks_are_deterministic_under_a_seeded_generator():
    def draw(seed):
        return fast.keep_mask((50, 7), 0.3, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


def test_dropout_scales_kept_units_identity_in_eval_and_gradient_is_the_mask():
    x = torch.randn(40, 25, requires_grad=True)
    y = dropout(x, 0.6, True, torch.Generator().manual_seed(0))
    m = fast.keep_mask(x.shape, 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(y, x * m)
    y.sum().backward()
    assert torch.equal(x.grad, m)
    assert dropout(x, 0.6, False) is x and dropout(x, 0.0, True) is x
    with pytest.raises(ValueError):
        fast.keep_mask((3,), 1.0)


def _toy_net():
    # No Linear bias right before a BatchNorm: its gradient is rounding noise, which Adam
    # normalises into full-size steps, so two exact implementations would drift apart.
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 4), torch.nn.Tanh(),
                               torch.nn.Linear(4, 2))


def test_flat_adam_equals_torch_adam_with_weight_decay_and_resumes_exactly():
    ref, ours = _toy_net(), _toy_net()
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=1e-3)
    opt = fast.FlatAdam(ours.parameters(), lr=1e-2, weight_decay=1e-3)
    xs = torch.randn(12, 8, 5)
    for i, x in enumerate(xs):
        for net, o in ((ref, opt_ref), (ours, opt)):
            o.zero_grad()
            net(x).pow(2).sum().backward()
            o.step()
        if i == 5:  # a resumed copy continues bitwise like the original
            saved_net, saved_opt = copy.deepcopy(ours.state_dict()), copy.deepcopy(opt.state_dict())
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref[1].weight, _toy_net()[1].weight)  # it did train
    resumed = _toy_net()
    opt2 = fast.FlatAdam(resumed.parameters(), lr=1e-2, weight_decay=1e-3)
    resumed.load_state_dict(saved_net)
    opt2.load_state_dict(saved_opt)
    for x in xs[6:]:
        opt2.zero_grad()
        resumed(x).pow(2).sum().backward()
        opt2.step()
    for a, b in zip(resumed.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)


def test_flat_adam_state_dict_is_torch_fused_adams_over_one_buffer_both_ways():
    """A checkpoint is either's: FlatAdam's state dict is torch.optim.Adam(fused=True)'s over the
    one flat parameter, key for key, and each continues the other's state bitwise."""
    ours = _toy_net()
    opt = fast.FlatAdam(ours.parameters(), lr=1e-2, weight_decay=1e-3)
    ref_param = torch.nn.Parameter(opt.flat.detach().clone())
    ref = torch.optim.Adam([ref_param], lr=1e-2, weight_decay=1e-3, fused=True)
    assert opt.state_dict() == ref.state_dict()  # before any step: no state, the same group
    xs = torch.randn(6, 8, 5)
    for x in xs[:3]:
        opt.zero_grad()
        ours(x).pow(2).sum().backward()
        ref_param.grad = torch.cat([p.grad.reshape(-1) for p in opt.views])
        opt.step()
        ref.step()
    mine, theirs = opt.state_dict(), ref.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys() == {0}
    for k, v in theirs["state"][0].items():
        assert torch.equal(mine["state"][0][k], v) and mine["state"][0][k].dtype == v.dtype, k
    assert torch.equal(opt.flat, ref_param)
    # torch's state into a fresh FlatAdam (and the lr a schedule had changed): it goes on as torch's
    ref.param_groups[0]["lr"] = 3e-3
    again = _toy_net()
    opt2 = fast.FlatAdam(again.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.no_grad():
        opt2.flat.copy_(ref_param)
    opt2.load_state_dict(copy.deepcopy(ref.state_dict()))
    assert opt2.param_groups[0]["lr"] == 3e-3
    for x in xs[3:]:
        opt2.zero_grad()
        again(x).pow(2).sum().backward()
        ref_param.grad = torch.cat([p.grad.reshape(-1) for p in opt2.views])
        opt2.step()
        ref.step()
    assert torch.equal(opt2.flat, ref_param)
    with pytest.raises(ValueError, match="values for a buffer"):
        fast.FlatAdam(torch.nn.Linear(2, 2).parameters(), lr=1e-2, weight_decay=0.0).load_state_dict(mine)


def test_a_cpu_fit_imports_no_dynamo(data_file, tmp_path):
    """torch.optim's optimizers import torch._dynamo when first built (~1 s of CPU): a trial's
    process paid it before its first epoch. The CPU path's fit (FlatAdam), its checkpoint and
    a resume from it build none."""
    code = f"""
import sys
from tagtune.study.config import ModelConfig, TrainConfig
from tagtune.study.data import load
from tagtune.study.fit.train import fit
ds = load({str(data_file)!r})
cfg = TrainConfig(method="b1", epochs=3, batch_size=16, lr_decay_epochs=(1,),
                  model=ModelConfig(layers=1, hidden=8))
fit(ds, cfg, on_epoch=lambda logs, save: save({str(tmp_path / "state")!r}) if logs["epoch"] == 2 else None)
fit(ds, cfg, resume={str(tmp_path / "state")!r})
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("F_, cfg, N, T", [
    (128, ModelConfig(), 16, 10),  # the paper's OpenMIC network, F == H: residual everywhere
    (6, ModelConfig(layers=2, hidden=8, dropout=0.5), 5, 4),  # first layer without residual
    (8, ModelConfig(layers=1, hidden=8, dropout=0.0), 5, 3),
    (7, ModelConfig(layers=0, hidden=8, dropout=0.5), 5, 3),
    (7, ModelConfig(layers=3, hidden=9, dropout=0.3), 7, 1),
    # The paper's network: H = F always (its skip adds the raw input to the stack's output).
    (128, PAPER, 16, 10),
    (8, ModelConfig(layers=2, hidden=8, dropout=0.5, arch="paper"), 5, 4),
    (8, ModelConfig(layers=1, hidden=8, dropout=0.0, arch="paper"), 5, 3),
    (7, ModelConfig(layers=0, hidden=7, dropout=0.5, arch="paper"), 5, 3),
    (9, ModelConfig(layers=3, hidden=9, dropout=0.3, arch="paper"), 7, 1),
])
def test_train_forward_equals_the_reference_forward(F_, cfg, N, T):
    ref = build_model(F_, 3, cfg, seed=0).train()
    ours = copy.deepcopy(ref)
    g_ref, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    y = (torch.rand(N, 3) < 0.4).float()
    for _ in range(2):  # the second step sees updated running statistics
        x = torch.randn(N, T, F_)
        p_ref, p_ours = ref.reference_forward(x, g_ref), ours(x, g_ours)
        assert p_ours.grad_fn is not None and "TrainForward" in type(p_ours.grad_fn).__name__
        torch.testing.assert_close(p_ours, p_ref, rtol=0, atol=1e-6)
        for net, p in ((ref, p_ref), (ours, p_ours)):
            net.zero_grad()
            F.binary_cross_entropy(p, y).backward()
        scale = max(q.grad.abs().max() for q in ref.parameters())
        for (name, a), b in zip(ref.named_parameters(), ours.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-5 * scale, msg=name)
        for (name, a), b in zip(ref.named_buffers(), ours.buffers(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(g_ref.get_state(), g_ours.get_state())  # the same noise drawn
    with torch.no_grad():  # MT's teacher: train mode without gradient, same noise
        x = torch.randn(N, T, F_)
        torch.testing.assert_close(ours(x, g_ours), ref.reference_forward(x, g_ref),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("F_, cfg", [(128, ModelConfig()), (6, ModelConfig(layers=2, hidden=8)),
                                     (7, ModelConfig(layers=0)), (8, ModelConfig(layers=1, hidden=8)),
                                     (128, PAPER), (7, ModelConfig(layers=0, hidden=7, arch="paper")),
                                     (8, ModelConfig(layers=1, hidden=8, arch="paper"))])
def test_eval_forward_equals_the_reference_forward(F_, cfg):
    model = build_model(F_, 3, cfg, seed=0).train()
    with torch.no_grad():  # running statistics away from 0 and 1
        for _ in range(3):
            model(torch.randn(16, 4, F_) * 3 + 1, torch.Generator().manual_seed(0))
    model.eval()
    x = torch.randn(9, 4, F_) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.reference_forward(x), rtol=0, atol=1e-6)
    x.requires_grad_(True)  # with gradient mode, eval runs the reference
    assert model(x).grad_fn is not None


def test_numpy_metrics_equal_sklearn_on_random_data_with_ties():
    from sklearn.metrics import average_precision_score, f1_score

    from tagtune.study.eval.metrics import _ap, f1_macro

    rng = np.random.default_rng(0)
    for _ in range(100):
        n, C = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        Y = (rng.random((n, C)) < rng.random()).astype(np.float32)
        S = np.round(rng.random((n, C)), int(rng.integers(1, 3)))  # ties at 1-2 decimals
        M = rng.random((n, C)) < rng.random()
        per_class = [f1_score(Y[M[:, c], c].astype(int), (S[M[:, c], c] >= 0.5).astype(int),
                              labels=[0, 1], average="macro", zero_division=0)
                     for c in range(C) if M[:, c].any()]
        expected = np.mean(per_class) if per_class else np.nan
        assert np.allclose(f1_macro(Y, S, M), expected, rtol=0, atol=1e-12, equal_nan=True)
        for c in range(C):
            y, s = Y[M[:, c], c], S[M[:, c], c]
            if (y == 1).any():
                assert _ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


# -- training results: ours against the conventional loop ------------------------------------

def _learnable(seed: int, n: int, T: int = 4, F_: int = 12, C: int = 4) -> Split:
    """Labels from a fixed linear rule on the frames' mean, half of them observed."""
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(99).normal(size=(F_, C))
    X = rng.normal(size=(n, T, F_)).astype(np.float32)
    Y = ((X.mean(1) @ W + rng.normal(scale=0.5, size=(n, C))) > 0.5).astype(np.float32)
    M = rng.random((n, C)) < 0.5
    return Split(X, Y * M, M, np.array([f"c{seed}_{i}" for i in range(n)]))


def _final_losses(n_seeds: int, epochs: int, dropout_rate: float = 0.6, method: str = "b1",
                  network: str = "residual"):
    """Selected validation losses of ``n_seeds`` runs of tagtune's fit and of the loop."""
    ds = Dataset(train=_learnable(0, 384), valid=_learnable(1, 256), test=_learnable(2, 16),
                 classes=("a", "b", "c", "d"), name="learnable")
    # The paper network adds its raw input (F = 12) to the stack's output: H = F.
    arch = {"layers": 2, "hidden": 12 if network == "paper" else 16, "dropout": dropout_rate,
            "arch": network}
    conv = bench_module("conventional")
    tr, va = ds.train, ds.valid
    ours, theirs = [], []
    for seed in range(n_seeds):
        cfg = TrainConfig(method=method, epochs=epochs, lr=3e-3, lr_decay_epochs=(), seed=seed,
                          alpha=0.9, model=ModelConfig(**arch))
        ours.append(fit(ds, cfg).best["val/loss"])
        theirs.append(conv.run((tr.X, tr.Y, tr.M.astype(np.float32)),
                               (va.X, va.Y, va.M.astype(np.float32)), method, epochs=epochs,
                               seed=seed, lr=3e-3, alpha=0.9, **arch))
    return np.array(ours), np.array(theirs)


def _same_mean(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    """Welch's t-test at 1%, and the difference of means within 3 standard errors."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    ok = p > 0.01 and abs(a.mean() - b.mean()) < 3 * se
    return ok, f"ours {a.mean():.4f}+-{a.std(ddof=1):.4f}, conventional {b.mean():.4f}+-" \
               f"{b.std(ddof=1):.4f}, p={p:.3f}, se={se:.4f}"


@pytest.mark.parametrize("network", ["residual", "paper"])
def test_training_result_is_statistically_that_of_the_conventional_loop(network):
    ours, theirs = _final_losses(n_seeds=6, epochs=6, network=network)
    assert ours.std() > 0 and theirs.std() > 0  # seeds matter: a real spread to compare with
    ok, why = _same_mean(ours, theirs)
    assert ok, why


@pytest.mark.slow
def test_training_result_equivalence_with_more_seeds_and_the_test_has_power():
    ours, theirs = _final_losses(n_seeds=16, epochs=12)
    ok, why = _same_mean(ours, theirs)
    assert ok, why
    # The same comparison tells apart a different dropout rate: it could fail.
    other, _ = _final_losses(n_seeds=16, epochs=12, dropout_rate=0.1)
    assert not _same_mean(other, theirs)[0]


@pytest.mark.slow
@pytest.mark.parametrize("network", ["residual", "paper"])
@pytest.mark.parametrize("method", ["b0", "le", "mt"])
def test_training_result_equivalence_for_the_other_methods(method, network):
    ok, why = _same_mean(*_final_losses(n_seeds=10, epochs=8, method=method, network=network))
    assert ok, why
