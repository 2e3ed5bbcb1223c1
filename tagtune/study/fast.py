"""Fast training primitives on the CPU: cheap dropout masks and the fastest exact Adam.

Why: on small networks such as the attention-MIL model (H = 128, 640 frames a batch)
a training step is only a few milliseconds and ``torch.bernoulli_`` -- what
``nn.Dropout`` uses -- draws one double per element (~9 ns per element): it was ~40%
of a step. Here a mask costs ~1 ns per element:

- the bits come from the same ``torch.Generator`` (Mersenne Twister) in 64-bit words,
  each cut into four 16-bit integers u, uniform on {0, ..., 2^16 - 1};
- an entry is kept iff u < round((1 - p) * 2^16), so the keep probability is
  k = round((1 - p) * 2^16) / 2^16, within 2^-17 of 1 - p (p = 0.6: 0.399994 instead
  of 0.4). The entries are independent Bernoulli(k), as with ``bernoulli_``; only the
  rate is quantised, by less than the sampling noise of any realistic training run;
- the kept entries are scaled by 1 / (1 - p) (inverted dropout, as ``nn.Dropout``);
- the comparison writes float32 directly (a bool tensor is ~4x slower to produce and
  ~6x slower to convert), then one in-place multiply applies the scale.

The generator's state fully determines the masks, so a checkpointed
``generator.get_state()`` resumes the noise stream exactly.

Adam: ``torch.optim.Adam(fused=True)`` runs one kernel over all parameters (~150 us a
step for this model, against ~320 us for the default foreach implementation) and
computes the same update (L2 weight decay added to the gradient, bias-corrected moments).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

KEEP_BITS = 16
"""Resolution of the keep probability: it is a multiple of 2^-KEEP_BITS."""
_OFFSET = 1 << (KEEP_BITS - 1)  # int16 holds u - 2^15


def keep_threshold(p: float) -> int:
    """The integer t with keep iff u < t, u uniform on {0, ..., 2^16 - 1}."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    return round((1.0 - p) * (1 << KEEP_BITS))


def keep_probability(p: float) -> float:
    """The exact keep probability of :func:`keep_mask` for rate ``p``."""
    return keep_threshold(p) / (1 << KEEP_BITS)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              generator: torch.Generator | None = None) -> Tensor:
    """float32 mask of ``shape``: 1 / (1 - p) with probability ``keep_probability(p)``, else 0.

    Entries are independent; the draw advances ``generator`` (the default one if None).
    """
    shape = torch.Size(shape)
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64)
    # The full 64-bit range (from = int64 min, to = None): every bit uniform, so each
    # int16 lane is uniform on [-2^15, 2^15). The default random_() leaves the top bit 0.
    words.random_(-(1 << 63), None, generator=generator)
    lanes = words.view(torch.int16)[:n].view(shape)
    mask = torch.empty(shape, dtype=torch.float32)
    torch.lt(lanes, keep_threshold(p) - _OFFSET, out=mask)
    return mask.mul_(1.0 / (1.0 - p))


def dropout(x: Tensor, p: float, training: bool, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout with a :func:`keep_mask`; the identity in eval mode or for p = 0."""
    if not training or p == 0.0:
        return x
    return x * keep_mask(x.shape, p, generator)


def _masks(n: int, layers: int, p: float, generator: torch.Generator | None) -> Tensor:
    """(layers, n) uint8 0/1 keep masks, drawn as ``layers`` successive :func:`keep_mask`
    calls would draw them (the same words from ``generator``, so the same masks). uint8,
    not float: a quarter of the bytes to write and read back, and ``float.mul_(uint8)`` is
    still a vectorised kernel (a bool mask is not)."""
    per = (n + 3) // 4
    words = torch.empty(layers, per, dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)
    mask = torch.empty(layers, 4 * per, dtype=torch.uint8)
    torch.lt(words.view(torch.int16), keep_threshold(p) - _OFFSET, out=mask)
    return mask[:, :n]


class _TrainForward(torch.autograd.Function):
    """The attention-MIL network in train mode with a hand-written backward.

    The math is ``AttentionMIL.reference_forward``'s; the work is less, in two ways.
    Fewer passes over the (frames x H) activations, which do not fit in L2 so that every
    pass goes to memory: uint8 masks for every layer from one draw; ReLU and mask in place;
    no bias broadcast before a BatchNorm (which removes it: only its running mean gets it);
    the residual gradient added in place by the input-gradient ``addmm_``. Fewer kernel
    calls, each ~5 us of dispatch on a ~3 ms step: the 1/(1-p) scale folded into the
    BatchNorm weight of the backward, counters and corrections as one ``_foreach`` call.
    """

    @staticmethod
    def forward(ctx, x: Tensor, model, generator, *params: Tensor) -> Tensor:
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
            ctx.k, ctx.layers = k, saved
            ctx.weights = (weights, gammas, [bn.eps for bn in bns], norm.eps, params[0],
                           params[1])
            ctx.head = (x2, xhat0, mean0, invstd0, h, W, att, cla, out)
        return out.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g: Tensor):
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


class FlatAdam:
    """``torch.optim.Adam(fused=True)`` over one flat buffer that holds every parameter.

    The parameters become views into that buffer, so a step is one fused kernel over one
    tensor, called directly (~70 us here, against ~150 us for ``Adam(fused=True)`` over the
    model's 18 tensors and ~320 us for the default foreach Adam): on a small network the
    per-tensor dispatch and ``Optimizer.step``'s wrapper, not the arithmetic, are the cost.
    The update is Adam's with L2 weight decay, bitwise. A parameter without a gradient
    counts as a zero gradient (``torch.optim.Adam`` would skip it; every parameter of the
    attention-MIL model has one at every step).

    ``param_groups``, ``state_dict`` and ``load_state_dict`` are those of the underlying
    ``torch.optim.Adam`` over the one flat parameter.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, weight_decay: float):
        self.views = [p for p in params if p.requires_grad]
        if not self.views or any(p.dtype != torch.float32 for p in self.views):
            raise ValueError("FlatAdam needs at least one float32 parameter, all float32")
        flat = torch.cat([p.detach().reshape(-1) for p in self.views])
        offset = 0
        for p in self.views:  # rebind every parameter to its slice of the buffer
            p.data = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.flat = torch.nn.Parameter(flat)
        self.adam = torch.optim.Adam([self.flat], lr=lr, weight_decay=weight_decay, fused=True)

    @property
    def param_groups(self) -> list[dict]:
        return self.adam.param_groups

    def state_dict(self) -> dict:
        return self.adam.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.adam.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.views:
            p.grad = None
        self.flat.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grad = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                          for p in self.views])
        self.flat.grad = grad
        group, state = self.adam.param_groups[0], self.adam.state[self.flat]
        if not state:  # as torch.optim.Adam(fused=True) initialises it
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(self.flat)
            state["exp_avg_sq"] = torch.zeros_like(self.flat)
        state["step"].add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_([self.flat], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [],
                           [state["step"]], amsgrad=False, lr=group["lr"], beta1=beta1,
                           beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False)


def adam(params: Iterable[Tensor], lr: float, weight_decay: float) -> FlatAdam:
    """The fastest exact Adam with L2 weight decay here: :class:`FlatAdam`."""
    return FlatAdam(params, lr=lr, weight_decay=weight_decay)


__all__ = ["KEEP_BITS", "FlatAdam", "adam", "dropout", "keep_mask", "keep_probability",
           "keep_threshold", "eval_forward", "train_forward", "train_parameters"]
