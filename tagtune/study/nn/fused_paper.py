"""The paper network's train and eval passes, fused by hand (see :mod:`tagtune.study.nn.fused`).

``AttentionMIL.reference_forward`` with ``arch = "paper"``: input BatchNorm, L x (Linear
without bias -> BatchNorm -> ReLU -> dropout), one skip adding the raw input to the stack's
output, attention ``clamp(sigmoid(.), eps, 1 - eps)`` normalised over time, ``hardtanh``.
The work saved is :mod:`tagtune.study.nn.fused`'s (one mask draw, ReLU and mask in place, both
heads in one product, the first layer's input gradient never formed); with no Linear bias
and no per-layer residual the bookkeeping is simpler. ``tests/study/test_fast.py`` checks
both passes against the reference: outputs, gradients, running statistics, noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tagtune.study.nn.fast import masks as _masks
from tagtune.study.nn.fused import _batch_norm_backward, _sigmoid_backward, _threshold_backward
from tagtune.study.nn.precision import products as _products

EPS_ATT = 1e-7
"""The paper network's clamp of the sigmoid attention: [EPS_ATT, 1 - EPS_ATT]."""


def _head(h: Tensor, W: Tensor, b: Tensor, N: int, T: int, C: int):
    """Attention (clamped sigmoid, its unclamped value kept for the clamp's gradient), frame
    probabilities and the clip probability before hardtanh, as the reference computes them."""
    S = torch.addmm(b, h, W.t()).view(N, T, 2 * C)
    sig = torch.sigmoid(S)  # all of S: contiguous, faster than the strided halves
    a, cla = sig[..., :C], sig[..., C:]
    att = a.clamp(EPS_ATT, 1.0 - EPS_ATT)
    total = att.sum(1, keepdim=True)
    out = (att / total * cla).sum(1)
    return a, att, total, cla, out


class _TrainForward(torch.autograd.Function):
    """The paper network in train mode with a hand-written backward (one per forward)."""

    @staticmethod
    def forward(ctx, x: Tensor, model, generator, *params: Tensor) -> Tensor:
        # bf16: every matrix product of the pass on bf16 operands (precision.products)
        with _products(getattr(model, "lowp", None)):
            return _TrainForward._forward(ctx, x, model, generator, *params)

    @staticmethod
    def _forward(ctx, x: Tensor, model, generator, *params: Tensor) -> Tensor:
        N, T, F = x.shape
        L = (len(params) - 6) // 3  # params: see train_parameters
        norm, bns = model.norm, list(model.bns)
        weights = params[2 : 2 + L]
        gammas, betas = params[2 + L : 2 + 3 * L : 2], params[3 + L : 2 + 3 * L : 2]
        torch._foreach_add_([b.num_batches_tracked for b in (norm, *bns)], 1)
        x2 = x.reshape(N * T, F)
        save = ctx is not None  # None: no gradient wanted (MT's teacher), nothing kept
        # The input BatchNorm without its affine part: the backward needs xhat0 (see there).
        xhat0, mean0, invstd0 = torch.native_batch_norm(
            x2, None, None, norm.running_mean, norm.running_var, True, norm.momentum, norm.eps)
        h = torch.addcmul(params[1], xhat0, params[0])
        dropout = L > 0 and model.p > 0.0
        k = 1.0 / (1.0 - model.p) if dropout else 1.0  # each layer's output is d * k
        masks = _masks(N * T * weights[0].shape[0], L, model.p, generator) if dropout else None
        saved = []
        for i in range(L):
            # A layer's input is d * k (its dropout scale): k goes into the weight instead, a
            # pass over (frames x H) less; the saved input is d, its gradients get the k back.
            z = torch.mm(h, (weights[i] * k if i and k != 1.0 else weights[i]).t())
            y, mean, invstd = torch.native_batch_norm(z, gammas[i], betas[i], bns[i].running_mean,
                                                      bns[i].running_var, True, bns[i].momentum,
                                                      bns[i].eps)
            h = y.relu_() if masks is None else y.relu_().mul_(masks[i].view_as(y))
            if save:
                saved.append((z, h, mean, invstd))
        # The one skip, from the raw input: x2 + d * k in one pass.
        h = torch.add(x2, h, alpha=k) if L else h + x2
        W, b = torch.cat([params[-4], params[-2]]), torch.cat([params[-3], params[-1]])
        C = params[-4].shape[0]
        a, att, total, cla, out = _head(h, W, b, N, T, C)
        if save:
            ctx.k, ctx.layers, ctx.lowp = k, saved, getattr(model, "lowp", None)
            ctx.weights = (weights, gammas, [bn.eps for bn in bns], params[0], params[1])
            ctx.head = (xhat0, h, W, a, att, total, cla, out)
        return out.clamp(0.0, 1.0)  # hardtanh's forward

    @staticmethod
    def backward(ctx, g: Tensor):
        with _products(ctx.lowp):
            return _TrainForward._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g: Tensor):
        k, (weights, gammas, eps, gamma0, beta0) = ctx.k, ctx.weights
        xhat0, h, W, a, att, total, cla, out = ctx.head
        N, T, C = att.shape
        g = (g * ((out > 0.0) & (out < 1.0))).unsqueeze(1)  # hardtanh's gradient: open interval
        # out = sum_t att_t cla_t / total: d/d att_s = (cla_s - out) / total, d/d cla_s = att_s / total
        g_att = (g * (cla - out.unsqueeze(1)) / total) * ((a >= EPS_ATT) & (a <= 1.0 - EPS_ATT))
        gS = torch.cat([_sigmoid_backward(g_att, a), _sigmoid_backward(g * att / total, cla)],
                       2).view(N * T, 2 * C)
        gW, gb = torch.mm(gS.t(), h), gS.sum(0)
        gh = torch.mm(gS, W)  # the skip's share goes to the raw input: no gradient wanted
        linear_grads, bn_grads = [], []
        gz = None
        for i in range(len(weights) - 1, -1, -1):
            z, d, mean, invstd = ctx.layers.pop()  # freed once used
            # d > 0 exactly where the unit is kept and its ReLU passes; k goes into gamma.
            gy = _threshold_backward(gh, d, 0.0)
            gz, gw_bn, gb_bn = _batch_norm_backward(
                gy, z, gammas[i] * k if k != 1.0 else gammas[i], None, None, mean, invstd,
                True, eps[i], [True, True, True])
            bn_grads += [gb_bn, gw_bn]
            if i == 0:
                break
            d_in = ctx.layers[-1][1]  # the layer's input is d_in * k
            linear_grads.append(torch.mm(gz.t(), d_in).mul_(k) if k != 1.0 else torch.mm(gz.t(), d_in))
            gh = torch.mm(gz, weights[i])
        if k != 1.0:
            torch._foreach_mul_(bn_grads, k)
        if weights:
            # h0 = xhat0 * gamma0 + beta0: P = gz' xhat0 gives the first weight's gradient and,
            # with W0, the input BatchNorm's (as in tagtune.study.nn.fused).
            P, g_sum = torch.mm(gz.t(), xhat0), gz.sum(0)
            linear_grads.append(torch.addr(P * gamma0, g_sum, beta0))
            gw0, gb0 = (weights[0] * P).sum(0), torch.mv(weights[0].t(), g_sum)
        else:  # h = BN(x) + x: the head's gradient reaches the input BatchNorm directly
            gw0, gb0 = torch.linalg.vecdot(gh, xhat0, dim=0), gh.sum(0)
        ctx.layers = ctx.head = ctx.weights = None
        return (None, None, None, gw0, gb0, *linear_grads[::-1], *bn_grads[::-1],
                gW[:C], gb[:C], gW[C:], gb[C:])


def train_parameters(model) -> list[Tensor]:
    """The parameters in the order :class:`_TrainForward` returns their gradients."""
    params = [model.norm.weight, model.norm.bias, *(lin.weight for lin in model.linears)]
    params += [t for bn in model.bns for t in (bn.weight, bn.bias)]
    return params + [model.att.weight, model.att.bias, model.cla.weight, model.cla.bias]


def train_forward(model, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``model.reference_forward(x, generator)`` in train mode (paper network), with the same
    masks and running statistics; without gradient mode nothing is kept for a backward."""
    if torch.is_grad_enabled():
        return _TrainForward.apply(x, model, generator, *train_parameters(model))
    return _TrainForward.forward(None, x, model, generator, *train_parameters(model))


@torch.no_grad()
def eval_forward(model, x: Tensor) -> Tensor:
    """``model.reference_forward(x)`` in eval mode (paper network), without gradient: each
    BatchNorm folded into the Linear before it, ReLU in place, both heads in one product."""
    with _products(getattr(model, "lowp", None)):
        return _eval_forward(model, x)


def _eval_forward(model, x: Tensor) -> Tensor:
    N, T, F = x.shape
    norm, x2 = model.norm, x.reshape(N * T, F)
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    h = torch.addcmul(torch.addcmul(norm.bias, norm.running_mean, scale, value=-1.0), x2, scale)
    for linear, bn in zip(model.linears, model.bns, strict=True):
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = torch.addcmul(bn.bias, bn.running_mean, scale, value=-1.0)
        h = torch.addmm(bias, h, (linear.weight * scale.unsqueeze(1)).t()).relu_()
    h = h.add_(x2)  # h is a fresh tensor here, never the caller's x
    W = torch.cat([model.att.weight, model.cla.weight])
    b = torch.cat([model.att.bias, model.cla.bias])
    return _head(h, W, b, N, T, model.att.out_features)[-1].clamp(0.0, 1.0)


__all__ = ["EPS_ATT", "eval_forward", "train_forward", "train_parameters"]
