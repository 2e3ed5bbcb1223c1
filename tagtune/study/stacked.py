"""Fused trials: N configs of one method trained as one stacked network.

One trial of this network cannot keep a GPU busy: a step is ~0.2 GFLOP in a few dozen small
kernels. Horizontal fusion (HFTA, Wang et al., MLSys 2021) trains N trials as one model: every
layer's N weight matrices stacked on a leading axis, one batched matmul per layer for all of
them. Each member keeps what makes it its own trial:

- its config: seed (so its own missing labels, initial weights and batch order), lr and weight
  decay, the method's parameters (gamma, alpha, beta, ...), its own learning-rate schedule;
- its own networks, optimizer and FitState (:mod:`tagtune.study.checkpoint`): the loop stacks
  the members' weights for each step's forward (``torch.stack``; autograd hands each member its
  own gradient), so a member's checkpoint is an ordinary trial's and resumes fused or alone;
- its own dropout noise (drawn from its own generator in the order its solo run draws it),
  BatchNorm statistics (each member's frames normalised by their own mean and variance, its
  running statistics updated as its own BatchNorm would) and early stopping.

The loss of a step is the sum of the members' losses, each computed by the method's own
``step`` on the member's slice of the stacked output; the members' parameters are disjoint, so
each gets exactly the gradient of its own loss. Every method runs fused; members may even be at
different stages (an LE teacher next to an LE student): the architecture is the same.

A member's results equal the same config trained alone on the generic torch path (the GPU's
path, :mod:`tagtune.study.device`) up to floating-point rounding: a batched matmul sums in
another order than a single one (tested on the CPU for every method). Validation runs per
member, as a solo run's does. Fused members run the generic path on the CPU too; they need not
be faster there (bench/bench_fused.py says what they measure).

:class:`Stack` is the engine (members join and leave between epochs: a Ray Tune member that ASHA
stops leaves); :func:`fit_many` the plain loop over it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tagtune.study import device as devices
from tagtune.study import methods, precision
from tagtune.study.checkpoint import FitState, save_state
from tagtune.study.config import ConfigError, TrainConfig
from tagtune.study.data import Dataset, remove_labels
from tagtune.study.dcase import taxonomy_of
from tagtune.study.fused_paper import EPS_ATT
from tagtune.study.methods import Batch, Hooks, MethodState
from tagtune.study.model import AttentionMIL
from tagtune.study.train import (
    FitResult,
    OnEpoch,
    _begin_train_epoch,
    _close_epoch,
    _Data,
    _result,
    _set_lr,
    _stage_boundary,
    _start,
    batch_starts,
)

SAME = ("method", "model", "batch_size", "epochs", "device", "precision", "deterministic")
"""Config fields the members of one stack share: they fix the shapes and the schedule of a step."""


def stack_key(cfg: TrainConfig) -> tuple:
    """What a stack's members share (:data:`SAME`), as a key to deal trials to stacks by: a cell
    whose study searches the network (``arch``, ``layers`` ...) fills one stack per network."""
    return tuple(getattr(cfg, f) for f in SAME)


@dataclass
class Member:
    """One trial of a stack."""

    cfg: TrainConfig
    ds: Dataset
    """The data with this member's labels removed (its seed, its proportion)."""
    fs: FitState
    hooks: Hooks
    train: _Data
    valid: _Data
    on_epoch: OnEpoch | None = None
    done: bool = False
    """Its last stage has ended (every epoch trained, or patience)."""
    failed: BaseException | None = None
    """What ended it with an error (its step, validation, callback or stage boundary raised): the
    others go on, as a trial's error ends only that trial."""

    def save(self, directory: str | Path) -> Path:
        """Its complete state, an ordinary trial's checkpoint (``fit(..., resume=directory)``)."""
        return save_state(self.fs, self.cfg, directory)

    def result(self) -> FitResult:
        return _result(self.fs, self.ds, self.cfg)


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


class Stack:
    """Members of one shape trained one epoch at a time, together."""

    def __init__(self, ds: Dataset, cfg: TrainConfig):
        self.ds, self.like = ds, cfg
        self.device = devices.resolve(cfg.device)
        self.lowp = precision.dtype(precision.resolve(cfg.precision, self.device))
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # a guard, as in fit: nothing reads the global stream
        # One copy of the clips on the device for every member; the labels are each member's.
        self.train_X = _Data.of(ds.train, self.device).X
        self.valid_X = _Data.of(ds.valid, self.device).X
        self.taxonomy = taxonomy_of(ds)
        self.members: list[Member] = []

    def add(self, cfg: TrainConfig, on_epoch: OnEpoch | None = None, resume: str | Path | None = None,
            le_teacher: Any = None) -> Member:
        """A member from the start, from a saved state (``resume``), or from a given LE teacher."""
        different = [f for f in SAME if getattr(cfg, f) != getattr(self.like, f)]
        if different:
            raise ConfigError("fuse", f"a fused trial differs from its stack in {', '.join(different)}")
        ds = remove_labels(self.ds, cfg.missing, seed=cfg.seed)
        methods.check_supported([cfg.method], ds.observation)
        train = _labels(self.train_X, ds.train)
        valid = _labels(self.valid_X, ds.valid)
        fs = _start(ds, cfg, train, resume, le_teacher, generic=True)
        member = Member(cfg, ds, fs, methods.hooks(cfg.method), train, valid, on_epoch)
        self._advance(member)  # a state saved at a stage's end goes on at the next stage's start
        self.members.append(member)
        return member

    def leave(self, member: Member) -> None:
        """Take ``member`` out (ASHA stopped it); its state stays readable."""
        self.members.remove(member)

    @property
    def active(self) -> list[Member]:
        return [m for m in self.members if not m.done and m.failed is None]

    def epoch(self, group: Sequence[Member] | None = None) -> list[Member]:
        """Train every active member (of ``group``: those) one epoch, stacked; validate each, call its
        ``on_epoch``, move it to its next stage where one ended. The members trained, in order."""
        group = [m for m in (self.members if group is None else group) if not m.done and m.failed is None]
        if not group:
            return []
        with devices.deterministic(self.like.deterministic):
            lrs = {id(m): _set_lr(m.fs, m.cfg) for m in group}
            train_logs = self._train_epoch(group)
            for m in group:
                if m.failed is not None:
                    continue
                try:
                    _close_epoch(m.fs, m.hooks, m.valid, m.ds.valid, m.cfg, m.on_epoch, self.taxonomy,
                                 lrs[id(m)], train_logs[id(m)])
                    self._advance(m)
                except Exception as e:  # noqa: BLE001 -- its error, not its stack-mates'
                    m.failed = e
        return group

    def _advance(self, m: Member) -> None:
        while m.fs.stage_epoch >= m.cfg.epochs or m.fs.stopped:
            if m.fs.stage == len(m.fs.stages) - 1:
                m.done = True
                return
            m.fs = _stage_boundary(m.fs, m.hooks, m.train, m.ds, m.cfg)

    def _train_epoch(self, group: list[Member]) -> dict[int, dict[str, float]]:
        """One pass over the clips for each member (its own order), every step one stacked forward.
        A member whose step raises leaves the pass (``failed``); the others' numbers do not change."""
        states = {id(m): _begin_train_epoch(m.fs, m.cfg, m.train) for m in group}
        N = self.train_X.shape[0]
        B = self.like.batch_size
        perms = {id(m): torch.randperm(N, generator=m.fs.batches).to(self.device) for m in group}
        starts = batch_starts(N, B)
        sums: dict[int, dict[str, Tensor]] = {id(m): {} for m in group}
        for i, start in enumerate(starts):
            alive = [m for m in group if m.failed is None]
            if not alive:
                break
            idx = torch.stack([perms[id(m)][start : start + B] for m in alive])
            X = self.train_X[idx]  # (members, B, T, F): one gather
            # Each member's noise in its solo order: the student's masks, then the teacher's.
            noise = [m.fs.noise for m in alive]
            P = forward([m.fs.model for m in alive], X, noise, self.lowp)
            Pt = None
            if alive[0].fs.teacher is not None:
                with torch.no_grad():
                    Pt = forward([m.fs.teacher for m in alive], X, noise, self.lowp)
            total: Tensor | None = None
            stepped = []
            for n, m in enumerate(alive):
                state = states[id(m)]
                rows = idx[n]
                batch = Batch(X[n], m.train.Y.index_select(0, rows), m.fs.train_M.index_select(0, rows))
                state.progress = m.fs.stage_epoch + i / len(starts)
                view = MethodState(_Ran(P[n], batch.X), m.cfg, m.fs.noise, m.fs.stage_name,
                                   None if Pt is None else _Ran(Pt[n], batch.X), state.progress,
                                   state.step, state.positives_per_clip)
                try:
                    loss, logs = m.hooks.step(batch, view)
                except Exception as e:  # noqa: BLE001 -- its error (a diverged lr, ...), not its stack-mates'
                    m.failed = e
                    continue
                stepped.append(m)
                total = loss if total is None else total + loss
                for k, v in {"train/loss": loss, **logs}.items():
                    sums[id(m)][k] = sums[id(m)].get(k, 0.0) + torch.as_tensor(v).detach()
            if total is None:
                break
            for m in stepped:
                m.fs.optimizer.zero_grad(set_to_none=True)
            total.backward()  # disjoint parameters: each member gets its own loss's gradient
            for m in stepped:
                state = states[id(m)]
                m.fs.optimizer.step()
                m.fs.steps += 1
                state.step = m.fs.steps
                if m.hooks.after_step is not None:
                    m.hooks.after_step(state)
        return {k: {name: float(v) / len(starts) for name, v in s.items()} for k, s in sums.items()}


def _labels(X: Tensor, split: Any) -> _Data:
    """A member's view of a split: the shared clips, its own labels and mask."""
    own = _Data.of(split, torch.device("cpu"))
    return _Data(X, own.Y.to(X.device), own.M.to(X.device))


def _stacked(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(tensors))


def forward(nets: Sequence[AttentionMIL], X: Tensor, generators: Sequence[torch.Generator],
            lowp: torch.dtype | None = None) -> Tensor:
    """(members, B, T, F) clips -> (members, B, C) clip probabilities, each member through its own
    network in train mode: ``reference_forward`` (both architectures), one batched op per layer."""
    if lowp is None:
        return _forward(nets, X, generators)
    with precision.autocast(X.device, lowp):
        return _forward(nets, X, generators).float()


def _forward(nets: Sequence[AttentionMIL], X: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    first = nets[0]
    N, B, T, F = X.shape
    x = X.reshape(N, B * T, F)  # frames are the BatchNorm's samples
    h = _batch_norm(x, [n.norm for n in nets])
    for i in range(len(first.linears)):
        z = _linear(h, [n.linears[i] for n in nets])
        z = _dropout(torch.relu(_batch_norm(z, [n.bns[i] for n in nets])), first.p, generators)
        h = z + h if first.arch != "paper" and z.shape == h.shape else z
    if first.arch == "paper":
        h = h + x  # its one skip: the raw input
    att = _linear(h, [n.att for n in nets]).float().view(N, B, T, -1)
    cla = torch.sigmoid(_linear(h, [n.cla for n in nets]).float().view(N, B, T, -1))
    if first.arch == "paper":
        att = torch.sigmoid(att).clamp(EPS_ATT, 1.0 - EPS_ATT)
        return torch.nn.functional.hardtanh((att / att.sum(dim=2, keepdim=True) * cla).sum(dim=2), 0.0, 1.0)
    return (torch.softmax(att, dim=2) * cla).sum(dim=2).clamp(0.0, 1.0)


def _linear(h: Tensor, linears: Sequence[torch.nn.Linear]) -> Tensor:
    W = _stacked([lin.weight for lin in linears]).transpose(1, 2)
    if linears[0].bias is None:
        return torch.bmm(h, W)
    return torch.baddbmm(_stacked([lin.bias for lin in linears]).unsqueeze(1), h, W)


def _batch_norm(h: Tensor, bns: Sequence[torch.nn.BatchNorm1d]) -> Tensor:
    """Train-mode BatchNorm1d of each member's rows (members, R, H), by its own statistics; each
    member's running mean and (unbiased) variance updated as ``torch.nn.BatchNorm1d`` does."""
    first = bns[0]
    var, mean = torch.var_mean(h, dim=1, correction=0)
    with torch.no_grad():
        R, m = h.shape[1], first.momentum
        running_mean = torch.lerp(_stacked([b.running_mean for b in bns]), mean.float(), m)
        running_var = torch.lerp(_stacked([b.running_var for b in bns]), var.float() * (R / (R - 1)), m)
        torch._foreach_copy_([b.running_mean for b in bns], list(running_mean.unbind(0)))
        torch._foreach_copy_([b.running_var for b in bns], list(running_var.unbind(0)))
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    scale = torch.rsqrt(var + first.eps) * _stacked([b.weight for b in bns])
    return (h - mean.unsqueeze(1)) * scale.unsqueeze(1) + _stacked([b.bias for b in bns]).unsqueeze(1)


def _dropout(z: Tensor, p: float, generators: Sequence[torch.Generator]) -> Tensor:
    """Each member's inverted-dropout mask from its own generator: bitwise the mask its solo run
    draws (:func:`tagtune.study.device.dropout` on the member's (R, H) slice)."""
    if p == 0.0:
        return z
    mask = torch.stack([torch.empty_like(z[0]).bernoulli_(1.0 - p, generator=g) for g in generators])
    return z * mask.div_(1.0 - p)


def fit_many(ds: Dataset, cfgs: Sequence[TrainConfig], *,
             on_epoch: Sequence[Callable[..., bool | None] | None] | None = None,
             resume: Sequence[str | Path | None] | None = None,
             le_teacher: Sequence[Any] | None = None) -> list[FitResult]:
    """:func:`tagtune.study.train.fit` for each config, trained as one stack.

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
