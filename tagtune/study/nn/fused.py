"""The attention-MIL network's train and eval passes, fused by hand (same math, less work).

On the CPU a training step of this small network (H = 128, 640 frames a batch) is a few
milliseconds, and what it costs beyond the matrix products is passes over (frames x H)
activations that do not fit in L2 -- every pass goes to memory -- and kernel dispatch.
:func:`train_forward` is ``AttentionMIL.reference_forward`` in train mode with a
hand-written backward; :func:`eval_forward` is its eval-mode forward with each BatchNorm
folded into the Linear before it. ``tests/study/test_fast.py`` checks both against the
reference: outputs, gradients, running statistics and the noise drawn.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tagtune.study.nn.fast import masks as _masks
from tagtune.study.nn.precision import products as _products


class _TrainForward(torch.autograd.Function):
    """The attention-MIL network in train mode with a hand-written backward.

    The math is ``AttentionMIL.reference_forward``'s (for the model as it builds it:
    affine BatchNorms with running statistics and a momentum); the work is less:

    - fewer passes over the activations: uint8 masks for every layer from one draw; ReLU
      and mask in place; no bias broadcast before a BatchNorm (which removes it: only
      its running mean gets it); the residual gradient added in place by ``addmm_``;
      each layer's activations freed as soon as the backward has used them;
    - one matrix product less: the first layer's input gradient (frames x F) is never
      formed, the input BatchNorm's gradients come from 128 x 128 products (see there);
    - fewer kernel calls: both heads in one product, the 1/(1-p) scale folded into the
      BatchNorm weight of the backward, counters and corrections as ``_foreach`` calls.

    One backward per forward (no ``retain_graph``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, model, generator, *params: Tensor) -> Tensor:
        # bf16: every matrix product of the pass on bf16 operands (precision.products)
        with _products(getattr(model, "lowp", None)):
            return _TrainForward._forward(ctx, x, model, generator, *params)

    @staticmethod
    def _forward(ctx, x: Tensor, model, generator, *params: Tensor) -> Tensor:
        N, T, F = x.shape
        L = (len(params) - 6) // 4  # params: see train_parameters
        norm, bns = model.norm, list(model.bns)
        weights, biases = params[2 : 2 + 2 * L : 2], params[3 : 3 + 2 * L : 2]
        gammas, betas = params[2 + 2 * L : 2 + 4 * L : 2], params[3 + 2 * L : 3 + 4 * L : 2]
        stats = [(bn.running_mean, bn.running_var) for bn in bns]
        torch._foreach_add_([b.num_batches_tracked for b in (norm, *bns)], 1)
        x2 = x.reshape(N * T, F)
        save = ctx is not None  # None: no gradient wanted (MT's teacher), nothing kept
        # The input BatchNorm without its affine part first: the normalised input xhat0 is
        # what the backward needs to skip the first layer's input gradient (see there).
        split = save and L > 0
        xhat0, mean0, invstd0 = torch.native_batch_norm(
            x2, None if split else params[0], None if split else params[1], norm.running_mean,
            norm.running_var, True, norm.momentum, norm.eps)
        h = torch.addcmul(params[1], xhat0, params[0]) if split else xhat0
        dropout = L > 0 and model.p > 0.0
        k = 1.0 / (1.0 - model.p) if dropout else 1.0  # each layer's output is d * k
        masks = _masks(N * T * weights[0].shape[0], L, model.p, generator) if dropout else None
        saved = []
        for i in range(L):
            z = torch.mm(h, weights[i].t())  # z - b: BatchNorm's output is the same
            y, mean, invstd = torch.native_batch_norm(z, gammas[i], betas[i], *stats[i], True,
                                                      bns[i].momentum, bns[i].eps)
            d = y.relu_() if masks is None else y.relu_().mul_(masks[i].view_as(y))
            if d.shape == h.shape:
                h_next = torch.add(h, d, alpha=k) if save else h.add_(d, alpha=k)
            else:
                h_next = d * k if k != 1.0 else d
            if save:
                saved.append((h, z, d, mean, invstd))
            h = h_next
        if L:  # the running means of z, not of z - b
            torch._foreach_add_([m for m, _ in stats], [b.detach() for b in biases],
                                alpha=bns[0].momentum)
        # Both heads in one product (a 40-wide one runs faster than two 20-wide ones). The
        # softmax over time stays on dim 1: over a last dim of 10 it is ~8x slower.
        W = torch.cat([params[-4], params[-2]])
        C = params[-4].shape[0]
        S = torch.addmm(torch.cat([params[-3], params[-1]]), h, W.t()).view(N, T, 2 * C)
        att = torch.softmax(S[..., :C], 1)
        cla = torch.sigmoid(S)[..., C:]  # all of S: contiguous, faster than the strided half
        out = (att * cla).sum(1)
        if save:
            ctx.k, ctx.layers, ctx.lowp = k, saved, getattr(model, "lowp", None)
            ctx.weights = (weights, gammas, [bn.eps for bn in bns], norm.eps, params[0],
                           params[1])
            ctx.head = (x2, xhat0, mean0, invstd0, h, W, att, cla, out)
        return out.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g: Tensor):
        with _products(ctx.lowp):
            return _TrainForward._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g: Tensor):
        k, (weights, gammas, eps, norm_eps, gamma0, beta0) = ctx.k, ctx.weights
        x2, xhat0, mean0, invstd0, h, W, att, cla, out = ctx.head
        N, T, C = att.shape
        g = (g * ((out >= 0.0) & (out <= 1.0))).unsqueeze(1)  # clamp's gradient
        gS = torch.cat([torch._softmax_backward_data(g * cla, att, 1, att.dtype),
                        _sigmoid_backward(g * att, cla)], 2).view(N * T, 2 * C)
        gW, gb = torch.mm(gS.t(), h), gS.sum(0)
        gh = torch.mm(gS, W)
        linear_grads, bn_grads = [], []
        for i in range(len(weights) - 1, -1, -1):
            # Popped: once used, a layer's activations are freed, and the allocator hands
            # their (cache-warm) memory to the next layer's gradients.
            h_in, z, d, mean, invstd = ctx.layers.pop()
            # d > 0 exactly where the unit is kept and its ReLU passes. gy lacks the factor
            # k; a BatchNorm weight times k puts it into gz (not into the weight gradients).
            gy = _threshold_backward(gh, d, 0.0)
            gz, gw_bn, gb_bn = _batch_norm_backward(
                gy, z, gammas[i] * k if k != 1.0 else gammas[i], None, None, mean, invstd,
                True, eps[i], [True, True, True])
            g_bias = gz.sum(0)
            bn_grads += [gb_bn, gw_bn]
            if i == 0:
                break
            if h_in.shape == d.shape:
                g_in = gh.addmm_(gz, weights[i])  # the residual's gradient plus the layer's
            else:
                g_in = torch.mm(gz, weights[i])
            linear_grads += [g_bias, torch.mm(gz.t(), h_in)]  # reversed at the end
            gh = g_in
        if k != 1.0:
            torch._foreach_mul_(bn_grads, k)
        if weights:
            # First layer, h0 = xhat0 * gamma0 + beta0: one product P = gz' xhat0 gives its
            # weight gradient gz' h0 = P gamma0 + (sum gz) beta0' and, with W0, the input
            # BatchNorm's gradients sum_r (gz W0) * xhat0 = sum_c W0 * P and sum_r gz W0 --
            # the (frames x F) input gradient gz W0 itself is never formed.
            P = torch.mm(gz.t(), xhat0)
            linear_grads += [g_bias, torch.addr(P * gamma0, g_bias, beta0)]
            gw0, gb0 = (weights[0] * P).sum(0), torch.mv(weights[0].t(), g_bias)
            if xhat0.shape == d.shape:  # the residual carries gh to h0 as it is
                gw0 += torch.linalg.vecdot(gh, xhat0, dim=0)
                gb0 += gh.sum(0)
        else:
            _, gw0, gb0 = _batch_norm_backward(gh, x2, gamma0, None, None, mean0, invstd0, True,
                                               norm_eps, [False, True, True])
        ctx.layers = ctx.head = ctx.weights = None
        return (None, None, None, gw0, gb0, *linear_grads[::-1], *bn_grads[::-1],
                gW[:C], gb[:C], gW[C:], gb[C:])


_threshold_backward = torch.ops.aten.threshold_backward.default
_sigmoid_backward = torch.ops.aten.sigmoid_backward.default
_batch_norm_backward = torch.ops.aten.native_batch_norm_backward.default


def train_parameters(model) -> list[Tensor]:
    """The parameters in the order :class:`_TrainForward` returns their gradients."""
    params = [model.norm.weight, model.norm.bias]
    params += [t for lin in model.linears for t in (lin.weight, lin.bias)]
    params += [t for bn in model.bns for t in (bn.weight, bn.bias)]
    return params + [model.att.weight, model.att.bias, model.cla.weight, model.cla.bias]


def train_forward(model, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``model.reference_forward(x, generator)`` in train mode, with the same masks and
    running statistics, computed with fewer passes over memory (see :class:`_TrainForward`).
    Without gradient mode (MT's teacher) nothing is kept for a backward."""
    if torch.is_grad_enabled():
        return _TrainForward.apply(x, model, generator, *train_parameters(model))
    return _TrainForward.forward(None, x, model, generator, *train_parameters(model))


@torch.no_grad()
def eval_forward(model, x: Tensor) -> Tensor:
    """``model.reference_forward(x)`` in eval mode, without gradient: each BatchNorm, now a
    fixed affine map, is folded into the Linear before it (or, the input one, into one
    ``addcmul``), ReLU and residual run in place, both heads in one product."""
    with _products(getattr(model, "lowp", None)):
        return _eval_forward(model, x)


def _eval_forward(model, x: Tensor) -> Tensor:
    N, T, F = x.shape
    norm = model.norm
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    h = torch.addcmul(torch.addcmul(norm.bias, norm.running_mean, scale, value=-1.0),
                      x.reshape(N * T, F), scale)
    for linear, bn in zip(model.linears, model.bns, strict=True):
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = torch.addcmul(bn.bias, linear.bias - bn.running_mean, scale)
        y = torch.addmm(bias, h, (linear.weight * scale.unsqueeze(1)).t()).relu_()
        h = h.add_(y) if y.shape == h.shape else y  # h is never the caller's x here
    W = torch.cat([model.att.weight, model.cla.weight])
    C = model.att.out_features
    S = torch.addmm(torch.cat([model.att.bias, model.cla.bias]), h, W.t()).view(N, T, 2 * C)
    return (torch.softmax(S[..., :C], 1) * torch.sigmoid(S)[..., C:]).sum(1).clamp(0.0, 1.0)


__all__ = ["eval_forward", "train_forward", "train_parameters"]
