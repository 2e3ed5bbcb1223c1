"""Fused trials (tagtune.study.fit.stacked): each member of a stack equals its config trained alone on
the generic torch path, for every method; checkpoints, leaving, refusals."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tagtune.study import methods
from tagtune.study.config import ConfigError, ModelConfig
from tagtune.study.fit.stacked import Stack, fit_many, forward
from tagtune.study.fit.train import fit
from tagtune.study.methods import METHODS
from tagtune.study.nn import device as devices
from tagtune.study.nn.model import build_model
from tests.conftest import TINY_CONFIG

# Rounding only: a batched matmul sums in another order than a single one; two epochs keep it small.
ATOL = 2e-5


# hidden = F: every layer has its residual. Without one, the input BatchNorm's shift has a true gradient
# of 0 (the next BatchNorm cancels it) and Adam turns the rounding noise of that 0 into lr-sized steps,
# in a solo run too: runs then differ by far more than rounding, and no tolerance would mean anything.
RESIDUAL = ModelConfig(layers=2, hidden=6, dropout=0.3)


def _members(method: str, **over) -> list:
    over.setdefault("model", RESIDUAL)
    over.setdefault("precision", "fp32")  # equal to fp32 rounding; bf16 rounds each shape its own way
    base = dataclasses.replace(TINY_CONFIG, method=method, missing=0.3, **over)
    # Different seeds (own missing labels, weights, batch order, noise) and different lrs.
    return [dataclasses.replace(base, seed=1, lr=3e-3), dataclasses.replace(base, seed=2, lr=1e-2),
            dataclasses.replace(base, seed=1, lr=1e-3)]


def _alone(ds, cfgs, monkeypatch, **kw):
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", True)
    try:
        return [fit(ds, c, **kw) for c in cfgs]
    finally:
        monkeypatch.setattr(devices, "GENERIC_ON_CPU", False)


DS_X: list = []


@pytest.fixture(autouse=True)
def _test_clips(tiny_dataset):
    DS_X[:] = [tiny_dataset.test.X]


def _assert_same_runs(fused, alone, atol=ATOL):
    for f, a in zip(fused, alone, strict=True):
        assert [h["epoch"] for h in f.history] == [h["epoch"] for h in a.history]
        for hf, ha in zip(f.history, a.history, strict=True):
            assert hf["stage"] == ha["stage"]
            for key in ("train/loss", "val/loss"):
                assert hf[key] == pytest.approx(ha[key], abs=atol), (key, hf["epoch"])
        # The selected networks' outputs, not their weights: a parameter whose true gradient is 0 (the
        # input BatchNorm's shift, cancelled by the next BatchNorm) gets Adam steps of rounding noise.
        X = torch.from_numpy(np.asarray(DS_X[0]))
        np.testing.assert_allclose(f.predict(X), a.predict(X), atol=10 * atol)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fused_equals_each_config_alone(tiny_dataset, method, monkeypatch):
    cfgs = _members(method)
    fused = fit_many(tiny_dataset, cfgs)
    _assert_same_runs(fused, _alone(tiny_dataset, cfgs, monkeypatch))
    # The members really differ from each other (not one run copied three times).
    assert fused[0].history[-1]["val/loss"] != fused[1].history[-1]["val/loss"]
    assert fused[0].history[-1]["val/loss"] != fused[2].history[-1]["val/loss"]


def test_paper_network_fused_equals_alone(tiny_dataset, monkeypatch):
    # layers = 0 (BN(x) + x): with layers the paper network's input shift has a true gradient of 0
    # (see RESIDUAL); its layers are checked step by step below.
    cfgs = _members("mt", model=ModelConfig(arch="paper", layers=0, hidden=6, dropout=0.3))
    _assert_same_runs(fit_many(tiny_dataset, cfgs), _alone(tiny_dataset, cfgs, monkeypatch))


@pytest.mark.parametrize("arch", ["residual", "paper"])
def test_stacked_forward_and_gradients_equal_each_network(arch):
    # One step, both architectures with layers: outputs, every gradient, the running statistics and
    # the dropout noise of each member equal its network's own forward (generic path).
    F = 6
    model = ModelConfig(arch=arch, layers=2, hidden=F, dropout=0.3)
    nets = [build_model(F, 3, model, seed=s) for s in (1, 2, 3)]
    twins = [copy.deepcopy(n) for n in nets]
    for n in (*nets, *twins):
        n.generic = True
    X = torch.randn(3, 5, 4, F)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    twin_gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    P = forward(nets, X, gens)
    P.square().sum().backward()
    for k, (twin, g) in enumerate(zip(twins, twin_gens, strict=True)):
        p = twin(X[k], generator=g)
        p.square().sum().backward()
        torch.testing.assert_close(P[k], p, atol=1e-6, rtol=1e-5)
        for (name, a), b in zip(nets[k].named_parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)
        for (name, a), b in zip(nets[k].named_buffers(), twin.buffers(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        assert torch.equal(gens[k].get_state(), g.get_state())  # the same noise drawn, and no more


def test_members_stop_early_at_their_own_epoch(tiny_dataset, monkeypatch):
    # Patience 1 over 6 epochs: members stop at different epochs (LE: in either stage), the others go on.
    cfgs = [dataclasses.replace(c, epochs=6, patience=1) for c in _members("le")]
    fused = fit_many(tiny_dataset, cfgs)
    _assert_same_runs(fused, _alone(tiny_dataset, cfgs, monkeypatch), atol=1e-4)
    assert len({len(r.history) for r in fused}) > 1, [len(r.history) for r in fused]


def test_a_member_that_leaves_does_not_change_the_others(tiny_dataset, monkeypatch):
    cfgs = [dataclasses.replace(c, epochs=3) for c in _members("mt")]
    fused = fit_many(tiny_dataset, cfgs, on_epoch=[lambda logs, save: logs["epoch"] == 1, None, None])
    assert len(fused[0].history) == 1
    _assert_same_runs(fused[1:], _alone(tiny_dataset, cfgs[1:], monkeypatch))


def test_a_fused_checkpoint_resumes_fused_bitwise_and_alone(tiny_dataset, tmp_path, monkeypatch):
    cfgs = [dataclasses.replace(c, epochs=2) for c in _members("le")]  # 4 epochs over 2 stages

    def saver(k):
        def on_epoch(logs, save):
            if logs["epoch"] == 2:  # stage 1's last epoch: the resume starts stage 2
                save(tmp_path / str(k))
        return on_epoch

    straight = fit_many(tiny_dataset, cfgs, on_epoch=[saver(k) for k in range(3)])
    resumed = fit_many(tiny_dataset, cfgs, resume=[tmp_path / str(k) for k in range(3)])
    for s, r in zip(straight, resumed, strict=True):
        assert s.history == r.history
        for ws, wr in zip(s.model.state_dict().values(), r.model.state_dict().values(), strict=True):
            assert torch.equal(ws, wr)
    # A member's checkpoint is an ordinary trial's: a solo run resumes it.
    alone = _alone(tiny_dataset, cfgs[:1], monkeypatch, resume=tmp_path / "0")
    _assert_same_runs(straight[:1], alone)


def test_members_join_a_running_stack(tiny_dataset, monkeypatch):
    # A member added after others trained (a new Tune trial joining the GPU's stack) trains as alone.
    cfgs = [dataclasses.replace(c, epochs=3) for c in _members("b1")]
    stack = Stack(tiny_dataset, cfgs[0])
    first = stack.add(cfgs[0])
    stack.epoch()
    later = [stack.add(c) for c in cfgs[1:]]
    while stack.active:
        stack.epoch()
    _assert_same_runs([first.result(), *(m.result() for m in later)], _alone(tiny_dataset, cfgs, monkeypatch))


def test_a_stack_refuses_a_member_of_another_shape(tiny_dataset):
    stack = Stack(tiny_dataset, TINY_CONFIG)
    with pytest.raises(ConfigError, match=r"fuse: .*batch_size"):
        stack.add(dataclasses.replace(TINY_CONFIG, batch_size=8))
    with pytest.raises(ConfigError, match=r"fuse: .*method"):
        stack.add(dataclasses.replace(TINY_CONFIG, method="mt"))


def test_fused_predictions_equal_alone(tiny_dataset, monkeypatch):
    cfgs = _members("hill")
    fused = fit_many(tiny_dataset, cfgs)
    alone = _alone(tiny_dataset, cfgs, monkeypatch)
    for f, a in zip(fused, alone, strict=True):
        np.testing.assert_allclose(f.predict(tiny_dataset.test.X), a.predict(tiny_dataset.test.X), atol=1e-4)


def test_a_member_that_fails_fails_alone(tiny_dataset, monkeypatch):
    # One member's step raises mid-epoch (as a diverged lr's BCE would), another's callback raises
    # after an epoch: each of them fails, and the third trains on exactly as it would alone.
    cfgs = [dataclasses.replace(c, epochs=3) for c in _members("mt")]
    stack = Stack(tiny_dataset, cfgs[0])

    def broken_callback(logs, save):
        if logs["epoch"] == 2:
            raise ValueError("its callback")

    members = [stack.add(cfgs[0]), stack.add(cfgs[1], broken_callback), stack.add(cfgs[2])]
    calls = []

    def broken_step(batch, state):
        calls.append(1)
        if len(calls) == 3:
            raise FloatingPointError("its step")
        return methods.hooks("mt").step(batch, state)

    members[0].hooks = dataclasses.replace(members[0].hooks, step=broken_step)
    while stack.active:
        stack.epoch()
    assert isinstance(members[0].failed, FloatingPointError) and members[0].fs.history == []
    assert isinstance(members[1].failed, ValueError) and len(members[1].fs.history) == 2
    assert members[2].failed is None and members[2].done
    _assert_same_runs([members[2].result()], _alone(tiny_dataset, cfgs[2:], monkeypatch))
    with pytest.raises(FloatingPointError):  # fit_many raises it, as fit would
        fit_many(tiny_dataset, cfgs[:1], on_epoch=[lambda logs, save: (_ for _ in ()).throw(
            FloatingPointError("x"))])
