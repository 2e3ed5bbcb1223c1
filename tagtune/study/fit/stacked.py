"""Fused trials: N configs of one method trained as one stacked network.

One trial of this network cannot keep a GPU busy: a step is ~0.2 GFLOP in a few dozen small
kernels. Horizontal fusion (HFTA, Wang et al., MLSys 2021) trains N trials as one model: every
layer's N weight matrices stacked on a leading axis, one batched matmul per layer for all of
them. Each member keeps what makes it its own trial:

- its config: seed (so its own missing labels, initial weights and batch order), lr and weight
  decay, the method's parameters (gamma, alpha, beta, ...), its own learning-rate schedule;
- its own networks, optimizer and FitState (:mod:`tagtune.study.fit.checkpoint`): each step's
  forward is the network's own forward mapped over the members' stacked weights
  (``torch.func.vmap`` of ``functional_call``; autograd hands each member its own gradient
  through ``torch.stack``), so a member's checkpoint is an ordinary trial's and resumes fused or
  alone;
- its own dropout noise (drawn from its own generator in the order its solo run draws it),
  BatchNorm statistics (each member's frames normalised by their own mean and variance, its
  running statistics updated as its own BatchNorm would) and early stopping.

The loss of a step is the sum of the members' losses, each computed by the method's own
``step`` on the member's slice of the stacked output; the members' parameters are disjoint, so
each gets exactly the gradient of its own loss. Every method runs fused; members may even be at
different stages (an LE teacher next to an LE student): the architecture is the same.

A member's results equal the same config trained alone on the generic torch path (the GPU's
path, :mod:`tagtune.study.nn.device`) up to floating-point rounding: a batched matmul sums in
another order than a single one (tested on the CPU for every method). Validation runs per
member, as a solo run's does. Fused members run the generic path on the CPU too; they need not
be faster there (bench/bench_fused.py says what they measure).

:class:`Stack` is :class:`tagtune.study.fit.train.Trainer` -- the one epoch loop, a solo fit's too --
with that stacked forward (members join and leave between epochs: a Ray Tune member that ASHA
stops leaves); :func:`fit_many` the plain loop over it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from tagtune.study.config import STACK_SAME as SAME
from tagtune.study.config import ConfigError, TrainConfig
from tagtune.study.data import Dataset, Split
from tagtune.study.fit.train import FitResult, Member, Networks, OnEpoch, Trainer, _Data
from tagtune.study.nn import device as devices
from tagtune.study.nn.model import AttentionMIL, DrawnMasks


class _Ran:
    """A network whose forward already ran, stacked: the method's step gets its member's slice.

    A step calls its networks on its batch only (every method does: the student, then MT's teacher);
    anything else would need a forward the stack did not run, and is refused.
    """

    def __init__(self, out: Tensor, X: Tensor):
        self.out, self.X, self.calls = out, X, 0

    def __call__(self, X: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if X is not self.X or self.calls:
            raise RuntimeError("a fused step calls each network once, on its batch")
        self.calls += 1
        return self.out


class Stack(Trainer):
    """Members of one shape (:data:`SAME`) trained together: :class:`tagtune.study.fit.train.Trainer`'s
    loop, every step's forward one stacked network for all of them (:func:`forward`)."""

    generic = True  # the stacked forward is torch's generic ops, whatever the device

    def __init__(self, ds: Dataset, cfg: TrainConfig):
        super().__init__(ds, cfg)
        # One copy of the clips on the device for every member; the labels are each member's.
        self.train_X = _Data.of(ds.train, self.device).X
        self.valid_X = _Data.of(ds.valid, self.device).X

    def _data(self, split: Split, name: str) -> _Data:
        """A member's view of a split: the shared clips, its own labels and mask."""
        X = {"train": self.train_X, "valid": self.valid_X}[name]
        own = _Data.of(split, torch.device("cpu"))
        return _Data(X, own.Y.to(X.device), own.M.to(X.device))

    def add(self, cfg: TrainConfig, on_epoch: OnEpoch | None = None, resume: str | Path | None = None,
            le_teacher: Any = None) -> Member:
        different = [f for f in SAME if getattr(cfg, f) != getattr(self.like, f)]
        if different:
            raise ConfigError("fuse", f"a fused trial differs from its stack in {', '.join(different)}")
        return super().add(cfg, on_epoch, resume=resume, le_teacher=le_teacher)

    def _forward(self, alive: list[Member], rows: list[Tensor]) -> list[Networks]:
        """Every member's network in one stacked forward, then every teacher's (each member's noise in
        its solo order: the student's masks, then the teacher's); each step gets its slices."""
        X = self.train_X[torch.stack(rows)]  # (members, B, T, F): one gather
        P = forward([m.fs.model for m in alive], X, [m.fs.noise for m in alive])
        taught = [n for n, m in enumerate(alive) if m.fs.teacher is not None]
        Pt: dict[int, Tensor] = {}
        if taught:
            with torch.no_grad():
                teachers = [alive[n].fs.teacher for n in taught]
                out = forward(teachers, X[taught], [alive[n].fs.noise for n in taught])
            Pt = dict(zip(taught, out, strict=True))
        nets = []
        for n in range(len(alive)):
            Xn = X[n]
            nets.append((Xn, _Ran(P[n], Xn), _Ran(Pt[n], Xn) if n in Pt else None))
        return nets


def forward(nets: Sequence[AttentionMIL], X: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """(members, B, T, F) clips -> (members, B, C) clip probabilities, each member through its own
    network in train mode.

    The network's own forward (:meth:`AttentionMIL.forward`, its generic path: torch's ops, bf16
    under autocast where the network's precision says so) mapped over the members' stacked weights
    with ``torch.func.vmap``: one batched op per layer. BatchNorm normalises each member's frames by
    their own statistics and updates each member's running statistics, as its solo forward does.
    Each member's dropout masks are drawn from its generator before the forward, in the order and
    shape its solo forward draws them.
    """
    first = nets[0]
    N, B, T, _ = X.shape
    # torch.stack, not torch.func.stack_module_state (whose stacks are new leaves): each member's
    # parameters get their gradient through the stack.
    params = _stacked([dict(n.named_parameters()) for n in nets])
    buffers = _stacked([dict(n.named_buffers()) for n in nets])
    masks = _masks(first, B * T, X.dtype, X.device, generators)

    def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, m: list[Tensor]) -> Tensor:
        return functional_call(first, (p, b), (x, DrawnMasks(m)))

    out = vmap(one)(params, buffers, X, masks)
    with torch.no_grad():  # the running statistics vmap updated in the stacked buffers, to each member
        for k, stacked in buffers.items():
            torch._foreach_copy_([dict(n.named_buffers())[k] for n in nets], list(stacked.unbind(0)))
    return out


def _stacked(tensors: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([t[k] for t in tensors]) for k in tensors[0]}


def _masks(first: AttentionMIL, rows: int, dtype: torch.dtype, device: torch.device,
           generators: Sequence[torch.Generator]) -> list[Tensor]:
    """Every dropout's masks, (members, rows, width) each, in the order the forward applies them;
    each member's drawn from its own generator in its solo order (layer by layer), in the dtype
    the layer's output has (bf16 under autocast)."""
    if first.p == 0.0:
        return []
    dtype = first.lowp or dtype
    per_member = [[devices.dropout_mask((rows, lin.out_features), dtype, device, first.p, g)
                   for lin in first.linears] for g in generators]
    return [torch.stack(layer) for layer in zip(*per_member, strict=True)]


def fit_many(ds: Dataset, cfgs: Sequence[TrainConfig], *,
             on_epoch: Sequence[Callable[..., bool | None] | None] | None = None,
             resume: Sequence[str | Path | None] | None = None,
             le_teacher: Sequence[Any] | None = None) -> list[FitResult]:
    """:func:`tagtune.study.fit.train.fit` for each config, trained as one stack.

    ``on_epoch[n](logs, save)`` is member n's callback (as ``fit``'s); returning True takes the
    member out of the stack (a scheduler stopped it): its result is its state at that epoch.
    """
    if not cfgs:
        return []
    n = len(cfgs)
    calls = list(on_epoch) if on_epoch is not None else [None] * n
    stack = Stack(ds, cfgs[0])
    left: set[int] = set()

    def caller(k: int) -> OnEpoch | None:
        if calls[k] is None:
            return None

        def call(logs: dict[str, Any], save: Callable[[Path], None]) -> None:
            if calls[k](logs, save):
                left.add(k)
        return call

    resume, le_teacher = resume or [None] * n, le_teacher or [None] * n
    members = [stack.add(cfg, caller(k), resume=resume[k], le_teacher=le_teacher[k])
               for k, cfg in enumerate(cfgs)]
    while stack.active:
        stack.epoch()
        for k in sorted(left):
            if members[k] in stack.members:
                stack.leave(members[k])
    failed = [m.failed for m in members if m.failed is not None]
    if failed:  # as fit would have raised it; the other members trained to their end
        raise failed[0]
    return [m.result() for m in members]


__all__ = ["SAME", "Member", "Stack", "fit_many", "forward"]
