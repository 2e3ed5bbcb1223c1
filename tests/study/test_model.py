"""The attention MIL model: shapes, pooling, dropout noise, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagtune.study.config import ModelConfig
from tagtune.study.nn.model import AttentionMIL, build_model, dropout, predict

CFG = ModelConfig(layers=2, hidden=8, dropout=0.5)


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("layers", [0, 1, 3])
def test_shapes_and_range_train_and_eval(T, layers):
    model = build_model(6, 3, ModelConfig(layers=layers, hidden=8, dropout=0.5), seed=0)
    x = torch.randn(5, T, 6)
    g = torch.Generator().manual_seed(0)
    for training in (True, False):
        p = model.train(training)(x, generator=g)
        assert p.shape == (5, 3)
        assert ((p >= 0) & (p <= 1)).all()
    p.sum().backward()  # differentiable end to end
    assert model.cla.weight.grad is not None


def test_t1_clip_probability_is_the_frame_probability():
    model = build_model(6, 3, CFG, seed=1).eval()
    x = torch.randn(4, 1, 6)
    h = model.norm(x[:, 0])
    for linear, bn in zip(model.linears, model.bns, strict=True):
        z = torch.relu(bn(linear(h)))
        h = z + h if z.shape == h.shape else z
    torch.testing.assert_close(model(x), torch.sigmoid(model.cla(h)))


def test_clip_probability_is_an_attention_mean_of_frame_probabilities():
    """In eval mode a frame's probability does not depend on the other frames: score each
    frame as a clip of T = 1; the clip must lie between its frames' min and max, and not
    depend on their order."""
    model = build_model(6, 3, CFG, seed=2).eval()
    x = torch.randn(5, 4, 6) * 3
    with torch.no_grad():
        clip = model(x)
        frames = model(x.reshape(20, 1, 6)).reshape(5, 4, 3)
        shuffled = model(x[:, [2, 0, 3, 1]])
    assert (clip >= frames.min(1).values - 1e-6).all()
    assert (clip <= frames.max(1).values + 1e-6).all()
    assert not torch.allclose(clip, frames.mean(1))  # weighted, not a plain mean
    torch.testing.assert_close(clip, shuffled)


def test_residual_only_where_widths_match():
    model = AttentionMIL(8, 2, ModelConfig(layers=2, hidden=8, dropout=0.0)).eval()
    with torch.no_grad():
        for linear in model.linears:  # kill the Linear path: a layer then passes its input on
            linear.weight.zero_()
            linear.bias.fill_(-100.0)
        x = torch.randn(3, 1, 8)
        expected = torch.sigmoid(model.cla(model.norm(x[:, 0])))
        torch.testing.assert_close(model(x), expected)
    narrow = AttentionMIL(6, 2, ModelConfig(layers=1, hidden=8, dropout=0.0)).eval()
    with torch.no_grad():
        narrow.linears[0].weight.zero_()
        narrow.linears[0].bias.fill_(-100.0)
        # 6 -> 8: no residual, so the embedding is 0 and every clip gets the same output
        out = narrow(torch.randn(3, 1, 6))
    torch.testing.assert_close(out, out[:1].expand(3, 2))


def test_dropout_rate_scale_and_generator():
    x = torch.ones(200, 100)
    a = dropout(x, 0.25, True, torch.Generator().manual_seed(0))
    b = dropout(x, 0.25, True, torch.Generator().manual_seed(0))
    c = dropout(x, 0.25, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a == 0).float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(a.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs(a.mean().item() - 1.0) < 0.02  # inverted dropout keeps the expectation
    assert dropout(x, 0.25, False) is x and dropout(x, 0.0, True) is x


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = (build_model(6, 3, CFG, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), before)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.cla.weight, c.cla.weight)


def test_predict_batches_accepts_2d_and_restores_mode():
    model = build_model(6, 3, CFG, seed=0).train()
    X = np.random.default_rng(0).normal(size=(10, 1, 6)).astype(np.float32)
    X.setflags(write=False)  # like a Split's arrays
    full = predict(model, X)
    assert model.training
    assert full.shape == (10, 3) and full.dtype == np.float32
    np.testing.assert_allclose(full, predict(model, X, batch_size=3), rtol=1e-6)
    np.testing.assert_allclose(full, predict(model, X[:, 0]), rtol=1e-6)


# --- the paper's network (arch = "paper") ----------------------------------------------------

class _PaperCode(torch.nn.Module):
    """A transcription of the paper code's DecisionLevelSingleAttention (EmbeddingLayers +
    Attention of src/model/Attention.py): 1x1 Conv2d over (N, F, T, 1), its layer order."""

    def __init__(self, F_: int, C: int, layers: int):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(F_, F_, (1, 1), bias=False) for _ in range(layers))
        self.bns = torch.nn.ModuleList(torch.nn.BatchNorm2d(F_) for _ in range(layers + 1))
        self.att, self.cla = torch.nn.Conv2d(F_, C, (1, 1)), torch.nn.Conv2d(F_, C, (1, 1))

    def forward(self, x):
        x = x.transpose(1, 2)[:, :, :, None].contiguous()
        out, residual = self.bns[0](x), x
        for i, conv in enumerate(self.convs):  # dropout 0: the rest is exactly the code's
            out = torch.relu(self.bns[i + 1](conv(out)))
        out = out + residual
        att = torch.clamp(torch.sigmoid(self.att(out)), 1e-7, 1.0 - 1e-7)[:, :, :, 0]
        cla = torch.sigmoid(self.cla(out))[:, :, :, 0]
        return torch.nn.functional.hardtanh(torch.sum(att / torch.sum(att, dim=2)[:, :, None] * cla, dim=2),
                                            0.0, 1.0)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_paper_network_equals_a_transcription_of_the_paper_code(layers):
    ours = build_model(8, 3, ModelConfig(layers=layers, hidden=8, dropout=0.0, arch="paper"), seed=0)
    ref = _PaperCode(8, 3, layers)
    with torch.no_grad():
        for conv, lin in zip(ref.convs, ours.linears, strict=True):
            conv.weight.copy_(lin.weight[:, :, None, None])
        for bn, b in zip(ref.bns, [ours.norm, *ours.bns], strict=True):
            bn.weight.copy_(b.weight)
            bn.bias.copy_(torch.randn_like(b.bias))
            b.bias.copy_(bn.bias)
        for conv, lin in ((ref.att, ours.att), (ref.cla, ours.cla)):
            conv.weight.copy_(lin.weight[:, :, None, None])
            conv.bias.copy_(torch.randn_like(lin.bias))
            lin.bias.copy_(conv.bias)
    for _ in range(2):  # train mode (batch statistics, running ones updated), then eval
        x = torch.randn(6, 5, 8) * 2 + 1
        torch.testing.assert_close(ours.train()(x), ref.train()(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.norm.running_var, ref.bns[0].running_var)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=0, atol=1e-6)


def test_paper_network_shape_init_and_width_check():
    from tagtune.study.config import ConfigError

    model = build_model(16, 4, ModelConfig(layers=2, hidden=16, arch="paper"), seed=0)
    assert all(lin.bias is None for lin in model.linears)  # its 1x1 convolutions have none
    bound = (6 / 16) ** 0.5
    for lin in (*model.linears, model.att, model.cla):
        w = lin.weight
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # uniform(+-sqrt(6/fan_in))
    assert not model.att.bias.any() and not model.cla.bias.any()
    with pytest.raises(ConfigError, match="model.hidden.*needs hidden = 16"):
        build_model(16, 4, ModelConfig(layers=2, hidden=8, arch="paper"), seed=0)
    with pytest.raises(ConfigError, match="arch"):
        ModelConfig(arch="softmax")


def test_paper_attention_is_the_clamped_sigmoid_normalised_over_time():
    """A clip's probability is sum_t a_t cla_t / sum_t a_t with a = clamp(sigmoid(.)), and the
    head sees BN(x) + x when L = 0."""
    model = build_model(4, 1, ModelConfig(layers=0, hidden=4, arch="paper"), seed=0).eval()
    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        h = model.norm(x.reshape(6, 4)) + x.reshape(6, 4)
        a = torch.sigmoid(model.att(h)).clamp(1e-7, 1 - 1e-7).view(2, 3)
        c = torch.sigmoid(model.cla(h)).view(2, 3)
        torch.testing.assert_close(model(x)[:, 0], (a * c).sum(1) / a.sum(1))
        softmax = (torch.softmax(model.att(h).view(2, 3), 1) * c).sum(1)
        assert not torch.allclose(model(x)[:, 0], softmax)  # not the residual network's softmax
