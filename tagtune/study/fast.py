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
    """(layers, n) float32 0/1 keep masks, drawn as ``layers`` successive :func:`keep_mask`
    calls would draw them (the same words from ``generator``, so the same masks)."""
    per = (n + 3) // 4
    words = torch.empty(layers, per, dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)
    mask = torch.empty(layers, 4 * per, dtype=torch.float32)
    torch.lt(words.view(torch.int16), keep_threshold(p) - _OFFSET, out=mask)
    return mask[:, :n]


def _bn(x: Tensor, bn: torch.nn.BatchNorm1d) -> tuple[Tensor, Tensor, Tensor]:
    """Train-mode BatchNorm1d as the module runs it (running statistics and counter too)."""
    bn.num_batches_tracked.add_(1)
    return torch.native_batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                   True, bn.momentum, bn.eps)


class _TrainForward(torch.autograd.Function):
    """The attention-MIL network in train mode with a hand-written backward.

    The math is ``AttentionMIL.reference_forward``'s; what changes is the work: masks for
    all layers in two kernels, dropout, scale and residual in one ``addcmul``, the 1/(1-p)
    scale folded into the (small) weight-shaped products of the backward, the residual
    gradient added by the input-gradient ``addmm``. Fewer passes over the (frames x H)
    activations is what counts: they do not fit in L2, so every pass goes to memory.
    """

    @staticmethod
    def forward(ctx, x: Tensor, model, generator, *params: Tensor) -> Tensor:
        N, T, F = x.shape
        x2 = x.reshape(N * T, F)
        h, mean0, invstd0 = _bn(x2, model.norm)
        L, p = len(model.linears), model.p
        masks = _masks(h.shape[0] * model.linears[0].out_features, L, p, generator) \
            if L and p > 0.0 else None
        scale = 1.0 / (1.0 - p)
        saved = []
        for i, (linear, bn) in enumerate(zip(model.linears, model.bns, strict=True)):
            # BatchNorm removes the bias: normalise z - b (no bias broadcast: a pass less)
            # and add b back to the running mean only.
            z = torch.mm(h, linear.weight.t())
            y, mean, invstd = _bn(z, bn)
            bn.running_mean.add_(linear.bias.detach(), alpha=bn.momentum)
            d = y.relu_() if masks is None else y.relu_().mul_(masks[i].view_as(y))
            k = 1.0 if masks is None else scale  # d is the dropout output over k
            if d.shape == h.shape:
                h_next = torch.add(h, d, alpha=k)
            else:
                h_next = d * k if k != 1.0 else d
            saved.append((h, z, d, mean, invstd))
            h = h_next
        att = torch.softmax(torch.addmm(model.att.bias, h, model.att.weight.t()).view(N, T, -1), 1)
        cla = torch.sigmoid(torch.addmm(model.cla.bias, h, model.cla.weight.t()).view(N, T, -1))
        out = (att * cla).sum(dim=1)
        ctx.model, ctx.scale, ctx.layers, ctx.dropout = model, scale, saved, masks is not None
        ctx.head = (x2, mean0, invstd0, h, att, cla, out)
        return out.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g: Tensor):
        model, s = ctx.model, ctx.scale
        x2, mean0, invstd0, h, att, cla, out = ctx.head
        N, T, C = att.shape
        g = (g * ((out >= 0.0) & (out <= 1.0))).unsqueeze(1)  # clamp's gradient
        g_att = torch._softmax_backward_data(g * cla, att, 1, att.dtype).view(N * T, C)
        g_cla = torch.ops.aten.sigmoid_backward(g * att, cla).view(N * T, C)
        head = [g_att.t() @ h, g_att.sum(0), g_cla.t() @ h, g_cla.sum(0)]
        gh = torch.mm(g_att, model.att.weight).addmm_(g_cla, model.cla.weight)
        layer_grads = []
        for (linear, bn), (h_in, z, d, mean, invstd) in zip(
                reversed(list(zip(model.linears, model.bns, strict=True))), reversed(ctx.layers),
                strict=True):
            # d > 0 exactly where the unit is kept and its ReLU passes; k is left out of gy.
            gy = torch.ops.aten.threshold_backward(gh, d, 0.0)
            k = s if ctx.dropout else 1.0
            gz, gw_bn, gb_bn = torch.ops.aten.native_batch_norm_backward(
                gy, z, bn.weight, bn.running_mean, bn.running_var, mean, invstd, True, bn.eps,
                [True, True, True])
            weight = linear.weight * k if k != 1.0 else linear.weight
            if h_in.shape == d.shape:
                g_in = gh.addmm_(gz, weight)  # the residual's gradient plus the layer's, in place
            else:
                g_in = torch.mm(gz, weight)
            g_w = torch.mm(gz.t(), h_in)
            layer_grads.append((g_w.mul_(k), gz.sum(0).mul_(k), gw_bn.mul_(k), gb_bn.mul_(k)))
            gh = g_in
        norm = model.norm
        _, gw0, gb0 = torch.ops.aten.native_batch_norm_backward(
            gh, x2, norm.weight, norm.running_mean, norm.running_var, mean0, invstd0, True,
            norm.eps, [False, True, True])
        layer_grads.reverse()
        grads = [gw0, gb0] + [g for lg in layer_grads for g in lg[:2]] \
            + [g for lg in layer_grads for g in lg[2:]] + head
        ctx.layers = ctx.head = None
        return (None, None, None, *grads)


def train_parameters(model) -> list[Tensor]:
    """The parameters in the order :class:`_TrainForward` returns their gradients."""
    params = [model.norm.weight, model.norm.bias]
    params += [t for lin in model.linears for t in (lin.weight, lin.bias)]
    params += [t for bn in model.bns for t in (bn.weight, bn.bias)]
    return params + [model.att.weight, model.att.bias, model.cla.weight, model.cla.bias]


def train_forward(model, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``model.reference_forward(x, generator)`` in train mode, with the same masks and
    running statistics, computed with fewer passes over memory (see :class:`_TrainForward`)."""
    return _TrainForward.apply(x, model, generator, *train_parameters(model))


class FlatAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` over one flat buffer that holds every parameter.

    The parameters become views into that buffer, so a step is one fused kernel over one
    tensor (~70 us here, against ~150 us for 18 tensors and ~320 us for the default
    foreach Adam): the per-tensor dispatch, not the arithmetic, is what costs on a small
    network. The gradients are gathered with one ``cat`` at each step; a parameter
    without a gradient counts as a zero gradient (``torch.optim.Adam`` would skip it;
    every parameter of the attention-MIL model has one at every step).

    ``state_dict`` / ``load_state_dict`` are Adam's, for the one flat parameter.
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
        super().__init__([self.flat], lr=lr, weight_decay=weight_decay, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.views:
            p.grad = None
        self.flat.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        """Adam's fused kernel called directly: ``Optimizer.step``'s wrapper costs as much."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                          for p in self.views])
        self.flat.grad = grad
        group, state = self.param_groups[0], self.state[self.flat]
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
        return loss


def adam(params: Iterable[Tensor], lr: float, weight_decay: float) -> torch.optim.Adam:
    """The fastest exact Adam with L2 weight decay here: :class:`FlatAdam`."""
    return FlatAdam(params, lr=lr, weight_decay=weight_decay)


__all__ = ["KEEP_BITS", "FlatAdam", "adam", "dropout", "keep_mask", "keep_probability",
           "keep_threshold", "train_forward", "train_parameters"]
