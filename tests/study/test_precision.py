"""Mixed precision (TrainConfig.precision): the choice, fp32 untouched, the bf16 kernels against
fp32 and against autocast's generic path, bitwise repeats, checkpoints across precisions."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tagtune.study.config import ConfigError, ModelConfig, TrainConfig, from_dict, replace, to_dict
from tagtune.study.fit.checkpoint import STATE_FILE
from tagtune.study.fit.train import fit
from tagtune.study.nn import device as devices
from tagtune.study.nn import precision
from tagtune.study.nn.model import build_model

# hidden 32: torch keeps a product with an inner dimension of 16 or less in fp32 even in
# oneDNN's bf16 mode (precision.products), so a narrower toy network would compute fp32 in "bf16".
TINY = TrainConfig(epochs=3, batch_size=16, lr=3e-3, lr_decay_epochs=(),
                   model=ModelConfig(layers=2, hidden=32, dropout=0.3))
CPU = torch.device("cpu")


class _Dtypes(TorchDispatchMode):
    """Records the dtype of every tensor an op returns, and oneDNN's math mode at every matrix
    product (the fused kernels' bf16 is that mode: no bf16 tensor of their own)."""

    PRODUCTS = ("aten.mm.", "aten.addmm.", "aten.addmm_.")

    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()
        self.modes: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.PRODUCTS):
            self.modes.add(torch.backends.mkldnn.matmul.fp32_precision)
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen.add(t.dtype)
        return out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_precision_field_is_validated_round_trips_and_defaults_to_auto():
    assert TrainConfig().precision == "auto"
    assert from_dict(TrainConfig, {**to_dict(TINY), "precision": "bf16"}).precision == "bf16"
    with pytest.raises(ConfigError, match=r"^config: precision: unknown precision 'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="precision: expected a string"):
        from_dict(TrainConfig, {"precision": 16})


def test_auto_is_bf16_only_where_native_and_bf16_elsewhere_warns_once(capsys, monkeypatch):
    assert precision.resolve("auto", CPU, native=True) == "bf16"
    assert precision.resolve("auto", CPU, native=False) == "fp32"
    assert precision.resolve("fp32", CPU, native=True) == "fp32"
    assert capsys.readouterr().err == ""
    precision._warn_emulated.cache_clear()
    assert precision.resolve("bf16", CPU, native=False) == "bf16"  # runs, not a crash
    assert precision.resolve("bf16", CPU, native=False) == "bf16"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no native bf16" in err and "slower" in err
    with pytest.raises(ConfigError, match="precision"):
        precision.resolve("half", CPU)
    assert precision.dtype("bf16") is torch.bfloat16 and precision.dtype("fp32") is None


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    with_flags, without = tmp_path / "a", tmp_path / "b"
    with_flags.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu avx512f avx512bw\n")
    assert precision.cpu_native_bf16(str(with_flags)) is True
    assert precision.cpu_native_bf16(str(without)) is False
    assert precision.cpu_native_bf16(str(tmp_path / "none")) is False


@pytest.mark.parametrize("generic", [False, True])
def test_fp32_runs_no_bf16_op_and_bf16_does(tiny_dataset, monkeypatch, generic):
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", generic)
    precision.bf16_products_apply()  # the once-a-process probe of the CPU, not the fit's products
    for name in ("fp32", "bf16"):
        with _Dtypes() as mode:
            fit(tiny_dataset, replace(TINY, method="mt", epochs=1, precision=name))
        if name == "fp32":  # no bf16 tensor, and no product in oneDNN's bf16 mode
            assert torch.bfloat16 not in mode.seen and "bf16" not in mode.modes
        elif generic:  # autocast: bf16 operands
            assert torch.bfloat16 in mode.seen
        else:  # the fused kernels: every product (training, MT's teacher, validation) in bf16 mode
            assert mode.modes == {"bf16"} and torch.bfloat16 not in mode.seen
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"  # and the mode is put back


def test_products_rounds_the_operands_to_bf16_and_returns_fp32():
    """What bf16 means in the fused kernels, at the networks' sizes: fp32 operands rounded to bf16,
    products accumulated in fp32 -- not rounded to bf16 afterwards -- and fp32 out; the mode
    restored on the way out, an exception included."""
    a, b = torch.randn(640, 128), torch.randn(128, 128)
    exact = torch.mm(a.bfloat16().double(), b.bfloat16().double())
    with precision.products(torch.bfloat16):
        got = torch.mm(a, b)
    assert got.dtype == torch.float32
    if precision.bf16_products_apply():
        assert float((got.double() - exact).abs().max()) < 1e-4 * float(exact.abs().max())
        assert not torch.equal(got, torch.mm(a, b))  # outside it: fp32 again
    else:  # a CPU whose fp32 products bypass oneDNN: the mode changes nothing, so auto is fp32
        assert torch.equal(got, torch.mm(a, b))
        assert precision.resolve("auto", torch.device("cpu")) == "fp32"
    with precision.products(None):  # fp32: nothing set
        assert torch.equal(torch.mm(a, b), torch.mm(a, b))
        assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"
    with pytest.raises(RuntimeError), precision.products(torch.bfloat16):
        raise RuntimeError
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"


def _step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and every parameter's gradient (one flat vector) of one BCE step from zero grads."""
    net.zero_grad()
    p = net(x, torch.Generator().manual_seed(3))
    F.binary_cross_entropy(p, y).backward()
    return p.detach(), torch.cat([q.grad.reshape(-1) for q in net.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", ["residual", "paper"])
@pytest.mark.parametrize("dropout", [0.0, 0.6])
def test_bf16_kernels_are_as_accurate_as_autocast(arch, dropout):
    """The fused kernels in bf16 against fp32: output, gradients (fp32 master weights), running
    statistics and eval output within bf16's rounding -- and, without dropout (the generic
    path's masks come from bernoulli_), no further from fp32 than torch's autocast is."""
    fp32 = build_model(128, 5, ModelConfig(arch=arch, dropout=dropout), seed=0).train()
    fused, generic = copy.deepcopy(fp32), copy.deepcopy(fp32)
    fused.lowp = generic.lowp = torch.bfloat16
    generic.generic = True
    x, y = torch.randn(32, 10, 128), (torch.rand(32, 5) < 0.4).float()
    p32, g32 = _step(fp32, x, y)
    p16, g16 = _step(fused, x, y)
    assert p16.dtype == g16.dtype == torch.float32
    assert all(q.dtype == torch.float32 for q in fused.parameters())
    assert not torch.equal(p16, p32)  # it did compute in bf16
    torch.testing.assert_close(p16, p32, rtol=0, atol=2e-2)
    # BatchNorm's backward subtracts means: bf16 operands cost ~5% of the gradient's norm here
    assert _rel(g16, g32) < 0.15
    for (name, a), b in zip(fp32.named_buffers(), fused.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2, msg=name)
    if dropout == 0.0:
        pa, ga = _step(generic, x, y)
        torch.testing.assert_close(pa, p32, rtol=0, atol=2e-2)
        assert _rel(g16, g32) <= 1.25 * _rel(ga, g32)
    fused.eval(), fp32.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), fp32(x), rtol=0, atol=2e-2)


@pytest.mark.parametrize("generic", [False, True])
def test_bf16_runs_repeat_bitwise_from_config_and_seed(tiny_dataset, monkeypatch, generic):
    monkeypatch.setattr(devices, "GENERIC_ON_CPU", generic)
    cfg = replace(TINY, method="mt", precision="bf16")
    a, b = fit(tiny_dataset, cfg), fit(tiny_dataset, cfg)
    assert a.history == b.history
    assert _same_weights(a.model, b.model) and _same_weights(a.other, b.other)
    c = fit(tiny_dataset, replace(cfg, seed=1))
    assert c.history != a.history
    assert fit(tiny_dataset, replace(cfg, precision="fp32")).history != a.history


@pytest.mark.parametrize(("first", "then"), [("fp32", "bf16"), ("bf16", "fp32")])
def test_a_checkpoint_resumes_in_the_other_precision(tiny_dataset, tmp_path, first, then):
    cfg = replace(TINY, method="mt")

    def save_at_1(logs, save):
        if logs["epoch"] == 1:
            save(tmp_path)

    whole = fit(tiny_dataset, replace(cfg, precision=first), on_epoch=save_at_1)
    resumed = fit(tiny_dataset, replace(cfg, precision=then), resume=tmp_path)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == whole.history[0]  # epoch 1 as the state recorded it
    assert all(math.isfinite(h["train/loss"]) and math.isfinite(h["val/loss"]) for h in resumed.history)
    assert resumed.history[1] != whole.history[1]  # epochs 2-3 computed in the other precision
    assert all(p.dtype == torch.float32 for p in resumed.model.parameters())
    # and a state resumes bitwise in its own precision
    again = fit(tiny_dataset, replace(cfg, precision=first), resume=tmp_path)
    assert again.history == whole.history and _same_weights(again.model, whole.model)
    saved = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert saved["cfg"]["precision"] == first
