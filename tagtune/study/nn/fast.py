"""Fast training primitives on the CPU: cheap dropout masks and the fastest exact Adam.

Why: on small networks such as the attention-MIL model (H = 128, 640 frames a batch) a
training step is a few milliseconds, and ``torch.bernoulli_`` -- what ``nn.Dropout``
uses -- draws one double per element (~9 ns per element here, ~30% of a conventional
step). Here a mask costs ~1 ns per element:

- the bits come from the same ``torch.Generator`` (Mersenne Twister) in 64-bit words,
  each cut into four 16-bit integers u, uniform on {0, ..., 2^16 - 1};
- an entry is kept iff u < round((1 - p) * 2^16), so the keep probability is
  k = round((1 - p) * 2^16) / 2^16, within 2^-17 of 1 - p (p = 0.6: 0.3999939 instead
  of 0.4). The entries are independent Bernoulli(k), as with ``bernoulli_``; only the
  rate is quantised, far below the sampling noise of any training run (8-bit integers
  would be off by up to 2^-9: 0.3984 for 0.4);
- the kept entries are scaled by 1 / (1 - p) (inverted dropout, as ``nn.Dropout``);
- the comparison writes float32 (or uint8) directly: a bool result is ~4x slower to
  produce and ~6x slower to convert.

The generator's state fully determines the masks, so a checkpointed
``generator.get_state()`` resumes the noise stream exactly.

Adam (:class:`FlatAdam`): ``torch.optim.Adam``'s fused kernel, called directly over one
flat buffer holding every parameter -- ~70 us a step for this model, against ~150 us for
``Adam(fused=True)`` over its 18 tensors and ~450 us for the default (per-tensor on the
CPU) -- with the same update (L2 weight decay added to the gradient, bias-corrected
moments), bitwise. It keeps the optimizer's state itself, in ``torch.optim.Adam``'s form.
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


def masks(n: int, layers: int, p: float, generator: torch.Generator | None) -> Tensor:
    """(layers, n) uint8 0/1 keep masks, drawn as ``layers`` successive :func:`keep_mask`
    calls would draw them (the same words from ``generator``, so the same masks). uint8:
    a quarter of the bytes of float32, and the fastest way found to apply a mask in place
    (``y.mul_(mask)``; a bool mask, ``where`` and ``masked_fill_`` are 2-20x slower)."""
    per = (n + 3) // 4
    words = torch.empty(layers, per, dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)
    mask = torch.empty(layers, 4 * per, dtype=torch.uint8)
    torch.lt(words.view(torch.int16), keep_threshold(p) - _OFFSET, out=mask)
    return mask[:, :n]


class FlatAdam:
    """``torch.optim.Adam(fused=True)`` over one flat buffer that holds every parameter.

    The parameters become views into that buffer, so a step is one fused kernel over one
    tensor, called directly (~70 us here, against ~150 us for ``Adam(fused=True)`` over the
    model's 18 tensors and ~320 us for the default foreach Adam): on a small network the
    per-tensor dispatch and ``Optimizer.step``'s wrapper, not the arithmetic, are the cost.
    The update is Adam's with L2 weight decay, bitwise. A parameter without a gradient
    counts as a zero gradient (``torch.optim.Adam`` would skip it; every parameter of the
    attention-MIL model has one at every step).

    ``param_groups``, ``state_dict`` and ``load_state_dict`` are those of ``torch.optim.Adam``
    (fused) over the one flat parameter, in the same form, so a checkpoint is either's. No
    ``torch.optim.Adam`` is built: its constructor and state-dict methods import torch._dynamo on
    first use (~1 s of CPU, 2026-12-07), which every trial's process paid before its first epoch.
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
        # torch.optim.Adam(fused=True)'s group, key for key (its state_dict's form).
        self.param_groups = [{"params": [self.flat], "lr": lr, "betas": (0.9, 0.999), "eps": 1e-8,
                              "weight_decay": weight_decay, **_ADAM_FLAGS}]
        self.state: dict[str, Tensor] = {}

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {0: dict(self.state)} if self.state else {},
                "param_groups": [{**group, "params": [0]}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's: the group's settings, the moments copied onto the buffer's device (the
        step count stays a float32 tensor on the buffer's device, as fused Adam keeps it)."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != 1:
            raise ValueError("FlatAdam loads the state of one group over one parameter")
        saved = state_dict["state"].get(groups[0]["params"][0], {})
        if saved and saved["exp_avg"].shape != self.flat.shape:
            raise ValueError(f"optimizer state of {saved['exp_avg'].numel()} values for a buffer "
                             f"of {self.flat.numel()}")
        self.param_groups[0].update({k: v for k, v in groups[0].items() if k != "params"})
        self.state = {k: v.to(device=self.flat.device, dtype=torch.float32).clone()
                      for k, v in saved.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.views:
            p.grad = None
        self.flat.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grad = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                          for p in self.views])
        self.flat.grad = grad
        group, state = self.param_groups[0], self.state
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


# The rest of torch.optim.Adam(fused=True)'s group (torch 2.13): in every state dict it writes.
_ADAM_FLAGS = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
               "differentiable": False, "fused": True, "decoupled_weight_decay": False}


def adam(params: Iterable[Tensor], lr: float, weight_decay: float) -> FlatAdam:
    """The fastest exact Adam with L2 weight decay here: :class:`FlatAdam`."""
    return FlatAdam(params, lr=lr, weight_decay=weight_decay)


__all__ = ["KEEP_BITS", "FlatAdam", "adam", "dropout", "keep_mask", "keep_probability",
           "keep_threshold", "masks"]
