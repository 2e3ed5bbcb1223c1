"""The fit loop shared by every method: one trial, from a Dataset and a TrainConfig.

Adam with weight decay, step decay of the learning rate, model selection by the
objective (``cfg.objective``, tagtune.study.objective: the validation loss -- BCE over the
observed validation labels -- or a validation metric), optional patience.
Data live in memory as tensors; a batch is a slice of a permutation of the clips.

The method is a module of tagtune.study.methods; the loop knows it only through its
declared stages and hooks (tagtune.study.methods.registry.Hooks): each step's loss, what
follows an optimizer step, a second network (MT's EMA teacher), which network is selected,
what happens when a stage begins (LE's label enhancement). Stages and the epoch counter:
most methods have one stage, ``main``; LE and LE+MT two, ``teacher`` (stage 1) then
``student`` (a fresh network). ``epoch`` is one global counter, ``stage_index * cfg.epochs +
epoch_in_stage``: stage 1's epochs are 1..E, stage 2's E+1..2E, also when stage 1 stopped
early or was given (``le_teacher``).

Randomness: the initial weights, the batch order and the dropout noise are each
drawn from a stream seeded by ``(cfg.seed, stream, stage)``; nothing reads the
global torch RNG (it is seeded anyway, and checkpointed, as a guard). Hence LE's
stage 1 is bitwise a B0 fit with the same config, and a student trained from a
given teacher equals one trained after that teacher in the same fit.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tagtune.study import methods
from tagtune.study import objective as objectives
from tagtune.study.config import ConfigError, TrainConfig
from tagtune.study.data import Dataset, Split, remove_labels
from tagtune.study.errors import first_line
from tagtune.study.eval.dcase import Taxonomy, taxonomy_of
from tagtune.study.eval.metrics import evaluate, tuned_thresholds
from tagtune.study.fit.checkpoint import (
    NOISE_STREAM,
    FitState,
    clone_state,
    load_payload,
    restore,
    save_state,
    seed63,
)
from tagtune.study.methods import Batch, Hooks, MethodState, masked_bce
from tagtune.study.nn import device as devices
from tagtune.study.nn import fast, precision
from tagtune.study.nn.model import AttentionMIL, build_model, predict

OnEpoch = Callable[[dict[str, Any], Callable[[Path], None]], None]
_STREAMS = {"init": 1, "batches": 2, "noise": NOISE_STREAM}


@dataclass
class FitResult:
    """What a fit produced."""

    history: list[dict[str, Any]]
    """The logs of every epoch, in order."""
    best: dict[str, Any]
    """The logs of the selected epoch (LE: of the student stage)."""
    model: AttentionMIL
    """The selected network (MT: the teacher, or the student with ``mt_select: student``),
    in eval mode."""
    cfg: TrainConfig
    other: AttentionMIL | None = None
    """MT: the network not selected (the student, or the teacher), at the selected epoch."""
    le_teacher: AttentionMIL | None = None
    """A two-stage method's selected stage-1 network (LE: reusable through ``fit(..., le_teacher=...)``)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Clip probabilities (N, C) of the selected model, eval mode, no gradient."""
        return predict(self.model, X)

    @property
    def other_suffix(self) -> str:
        """MT: the suffix of the other network's metric names (``_student`` or ``_teacher``)."""
        return other_suffix(self.cfg)


def other_suffix(cfg: TrainConfig) -> str:
    """MT: metric names of the network not selected end with this: ``val/loss_student``."""
    return methods.hooks(cfg.method).other_suffix(cfg)


@dataclass
class _Data:
    X: Tensor
    Y: Tensor
    M: Tensor

    @classmethod
    def of(cls, s: Split, device: torch.device = torch.device("cpu")) -> _Data:
        # Views of Split's read-only arrays, not copies (OpenMIC's X: ~25 ms a fit); torch
        # warns that it could write to them, and nothing here does. On a GPU: copied there
        # once a fit, and every batch is indexed there.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            X, Y = torch.from_numpy(s.X).to(device), torch.from_numpy(s.Y).to(device)
        return cls(X, Y, torch.tensor(s.M, dtype=torch.float32, device=device))

    @functools.cached_property
    def positives_per_clip(self) -> float:
        """Mean number of observed positives per clip (EPR's default k); fixed for a fit."""
        return float(self.Y.sum(1).mean())


def stream_seed(seed: int, stream: str, stage: int) -> int:
    """A 63-bit seed of its own for each (run seed, stream, stage)."""
    return seed63(seed, _STREAMS[stream], stage)


def lr_at(cfg: TrainConfig, stage_epoch: int, stage: str = "main") -> float:
    """Learning rate of the 1-based ``stage_epoch``: decayed once per milestone passed."""
    lr = methods.hooks(cfg.method).stage_lr(cfg, stage)
    return lr * cfg.lr_decay ** sum(stage_epoch > m for m in cfg.lr_decay_epochs)


def fit(ds: Dataset, cfg: TrainConfig, *, on_epoch: OnEpoch | None = None,
        resume: str | Path | None = None, le_teacher: Any = None) -> FitResult:
    """Train ``cfg.method`` on ``ds`` and return the selected model and the history.

    ``on_epoch(logs, save)`` is called after every epoch; ``save(dir)`` writes the
    complete state there, and ``fit(..., resume=dir)`` continues from it exactly.
    ``le_teacher`` (a method whose stage 1 is shared, LE; a module or a state dict of the
    configured architecture, trained on the same labels, e.g. a B0 fit's model) skips stage 1;
    on ``resume`` the saved teacher is used instead.

    A :class:`Trainer` of one member on ``cfg.device`` (tagtune.study.nn.device), deterministic
    algorithms if asked: the loop a fused stack runs too (tagtune.study.fit.stacked).
    """
    with devices.deterministic(cfg.deterministic):
        trainer = Trainer(ds, cfg)
        member = trainer.add(cfg, on_epoch, resume=resume, le_teacher=le_teacher)
        while trainer.active:
            trainer.epoch()
        if member.failed is not None:
            raise member.failed
        return member.result()


@dataclass
class Member:
    """One trial of a :class:`Trainer`: its config, its data (its labels removed), its state."""

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


Networks = tuple[Tensor, Any, Any]
"""What a step gets for one member's batch: the clips, and the callables that stand for its
network and its teacher (None without one)."""


class Trainer:
    """The one epoch loop: members trained one epoch at a time, together, each its own trial.

    :func:`fit` is a trainer of one member that calls its networks directly (the CPU's fused
    kernels, or the generic torch path). A fused stack (:class:`tagtune.study.fit.stacked.Stack`) is
    this loop with every step's forward run for all its members as one stacked network; nothing
    else differs. Members join and leave between epochs (a member ASHA stopped leaves).
    """

    generic: bool | None = None
    """The generic torch path for every member whatever the device (None: as the device says)."""

    def __init__(self, ds: Dataset, cfg: TrainConfig):
        self.ds, self.like = ds, cfg
        self.device = devices.resolve(cfg.device)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # a guard: nothing reads the global stream
        self.taxonomy = taxonomy_of(ds)  # parsed once, not every epoch
        self.members: list[Member] = []

    def _data(self, split: Split, name: str) -> _Data:
        """A member's clips, labels and mask of its split ``name`` (train, valid), on the device."""
        return _Data.of(split, self.device)

    def add(self, cfg: TrainConfig, on_epoch: OnEpoch | None = None, resume: str | Path | None = None,
            le_teacher: Any = None) -> Member:
        """A member from the start, from a saved state (``resume``), or from a given LE teacher."""
        ds = remove_labels(self.ds, cfg.missing, seed=cfg.seed)
        methods.check_supported([cfg.method], ds.observation)
        if le_teacher is not None and not methods.shares_teacher(cfg.method):
            shared = [m for m in methods.METHODS if methods.shares_teacher(m)]
            raise ConfigError("le_teacher", f"only for method {', '.join(shared)}, not {cfg.method}")
        train, valid = self._data(ds.train, "train"), self._data(ds.valid, "valid")
        with devices.deterministic(cfg.deterministic):
            fs = _start(ds, cfg, train, resume, le_teacher, generic=self.generic)
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
        """Train every active member (of ``group``: those) one epoch; validate each, call its
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
                except Exception as e:  # noqa: BLE001 -- its error, not the other members'
                    m.failed = e
        return group

    def _advance(self, m: Member) -> None:
        while m.fs.stage_epoch >= m.cfg.epochs or m.fs.stopped:
            if m.fs.stage == len(m.fs.stages) - 1:
                m.done = True
                return
            m.fs = _stage_boundary(m.fs, m.hooks, m.train, m.ds, m.cfg)

    def _forward(self, alive: list[Member], rows: list[Tensor]) -> list[Networks]:
        """Each member's batch and its networks, called by its step as they are."""
        return [(m.train.X.index_select(0, r), m.fs.model, m.fs.teacher)
                for m, r in zip(alive, rows, strict=True)]

    def _train_epoch(self, group: list[Member]) -> dict[int, dict[str, float]]:
        """One pass over the training clips for each member, in its own random order; the mean of
        its step logs. A member whose step raises leaves the pass (``failed``); the others' numbers
        do not change."""
        states = {id(m): _begin_train_epoch(m.fs, m.cfg, m.train) for m in group}
        N = group[0].train.X.shape[0]
        B = self.like.batch_size
        perms = {id(m): torch.randperm(N, generator=m.fs.batches).to(m.train.X.device) for m in group}
        starts = batch_starts(N, B)
        sums: dict[int, dict[str, Tensor]] = {id(m): {} for m in group}
        for i, start in enumerate(starts):
            alive = [m for m in group if m.failed is None]
            if not alive:
                break
            rows = [perms[id(m)][start : start + B] for m in alive]
            nets = self._forward(alive, rows)
            total: Tensor | None = None
            stepped = []
            for m, r, (X, model, teacher) in zip(alive, rows, nets, strict=True):
                state = states[id(m)]
                state.progress = m.fs.stage_epoch + i / len(starts)
                batch = Batch(X, m.train.Y.index_select(0, r), m.fs.train_M.index_select(0, r))
                direct = model is state.model
                view = state if direct else dataclasses.replace(state, model=model, teacher=teacher)
                try:
                    loss, logs = m.hooks.step(batch, view)
                except Exception as e:  # noqa: BLE001 -- its error (a diverged lr, ...), not the others'
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


def _start(ds: Dataset, cfg: TrainConfig, train: _Data, resume: str | Path | None, le_teacher: Any,
           generic: bool | None = None) -> FitState:
    """The state a fit starts from: fresh, resumed from a saved state, or at the last stage with a
    given LE teacher."""
    stages = methods.stages(cfg.method)
    if resume is not None:
        payload = load_payload(resume, cfg)
        fs = _new_stage_state(stages, payload["stage"], train, ds, cfg, generic)
        restore(fs, payload)
        return fs
    first = len(stages) - 1 if le_teacher is not None else 0
    fs = _new_stage_state(stages, first, train, ds, cfg, generic)
    if le_teacher is not None:
        methods.hooks(cfg.method).begin_stage(fs, _as_state(le_teacher, ds, cfg), train, cfg)
    return fs


def _stage_boundary(fs: FitState, hooks: Hooks, train: _Data, ds: Dataset, cfg: TrainConfig) -> FitState:
    """The next stage's state. The stage's selected network goes to the method (LE: it enhances
    the labels of the next stage's fresh network)."""
    selected = fs.best_model if fs.best_model is not None else clone_state(fs.model)
    fs = _next_stage(fs, train, ds, cfg)
    if hooks.begin_stage is not None:
        hooks.begin_stage(fs, selected, train, cfg)
    return fs


def _new_stage_state(stages: tuple[str, ...], stage: int, train: _Data, ds: Dataset,
                     cfg: TrainConfig, generic: bool | None = None) -> FitState:
    """Fresh networks, optimizer and random streams for ``stages[stage]``; ``generic``: the
    generic torch path whatever the device (fused trials, tagtune.study.fit.stacked)."""
    device = train.X.device
    model = _network(ds, cfg, stage).to(device)
    model.generic = devices.generic(device) if generic is None else generic
    model.lowp = precision.dtype(precision.resolve(cfg.precision, device))  # None: fp32
    # The batch order is drawn on the CPU on every device (the same order for a seed; a
    # checkpoint's stream resumes anywhere); the noise where the masks are made.
    batches, noise = torch.Generator(), torch.Generator(device=device)
    batches.manual_seed(stream_seed(cfg.seed, "batches", stage))
    noise.manual_seed(stream_seed(cfg.seed, "noise", stage))
    make_teacher = methods.hooks(cfg.method).make_teacher  # MT's EMA teacher
    teacher = make_teacher(model) if make_teacher is not None else None
    return FitState(
        stages=stages, stage=stage, model=model, teacher=teacher,
        optimizer=_adam(model, cfg),
        batches=batches, noise=noise, train_M=train.M,
    )


def _next_stage(fs: FitState, train: _Data, ds: Dataset, cfg: TrainConfig) -> FitState:
    """The following stage: a fresh network and optimizer at the initial learning rate."""
    nxt = _new_stage_state(fs.stages, fs.stage + 1, train, ds, cfg, generic=fs.model.generic)
    nxt.history = fs.history
    return nxt


def _adam(model: AttentionMIL, cfg: TrainConfig) -> torch.optim.Optimizer | fast.FlatAdam:
    """The CPU path's FlatAdam, or torch's fused Adam (the generic path: the GPU's kernel)."""
    if model.generic:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return fast.adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _network(ds: Dataset, cfg: TrainConfig, stage: int) -> AttentionMIL:
    return build_model(ds.train.F, ds.train.C, cfg.model, stream_seed(cfg.seed, "init", stage))


def _as_state(teacher: Any, ds: Dataset, cfg: TrainConfig) -> dict[str, Tensor]:
    """A given LE teacher as a state dict that fits the configured architecture."""
    state = teacher.state_dict() if isinstance(teacher, torch.nn.Module) else teacher
    try:
        _network(ds, cfg, 0).load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        problem = first_line(e, None)
        raise ConfigError("le_teacher", f"does not fit the model config: {problem}") from None
    return {k: v.detach().clone() for k, v in state.items()}


def _network_from(state: dict[str, Tensor], like: AttentionMIL) -> AttentionMIL:
    net = copy.deepcopy(like)
    net.load_state_dict(state)
    return net.eval()


def _set_lr(fs: FitState, cfg: TrainConfig) -> float:
    """The learning rate of the epoch about to be trained, set in the optimizer."""
    lr = lr_at(cfg, fs.stage_epoch + 1, fs.stages[fs.stage])
    for group in fs.optimizer.param_groups:
        group["lr"] = lr
    return lr


def _close_epoch(fs: FitState, hooks: Hooks, valid: _Data, valid_split: Split, cfg: TrainConfig,
                 on_epoch: OnEpoch | None, taxonomy: Taxonomy | None, lr: float,
                 train_logs: dict[str, float]) -> None:
    """After an epoch's training: validate, update the selection, log, call back."""
    fs.stage_epoch += 1
    selected, other = _selected(fs, cfg)
    val_loss, val_metrics = _validate(selected, valid, valid_split, taxonomy)
    logs: dict[str, Any] = {
        "epoch": fs.stage * cfg.epochs + fs.stage_epoch,
        "stage": fs.stage_name,
        "lr": lr,
        "precision": "bf16" if fs.model.lowp is not None else "fp32",  # auto, resolved
        **train_logs,
        "val/loss": val_loss,
        **val_metrics,
    }
    if other is not None:  # MT: the other network, for comparison, under a suffix
        loss_o, metrics_o = _validate(other, valid, valid_split, taxonomy)
        suffix = hooks.other_suffix(cfg)
        logs |= {f"val/loss{suffix}": loss_o, **{k + suffix: v for k, v in metrics_o.items()}}
    logs |= fs.method_logs  # LE: le/masked_fraction

    # The objective as a quantity to minimise (for val/loss the loss itself, so a checkpoint's
    # best_loss from before the setting means what it meant); NaN is never the best.
    score = objectives.of_logs(logs, cfg.objective)
    if score < fs.best_loss:
        fs.best_loss, fs.best_logs, fs.bad_epochs = score, logs, 0
        fs.best_model = clone_state(selected)
        fs.best_other = clone_state(other) if other is not None else None
    else:
        fs.bad_epochs += 1
        fs.stopped = cfg.patience is not None and fs.bad_epochs >= cfg.patience
    fs.history.append(logs)
    if on_epoch is not None:

        def save(directory: Path) -> None:
            save_state(fs, cfg, directory)

        on_epoch(logs, save)


def _selected(fs: FitState, cfg: TrainConfig) -> tuple[AttentionMIL, AttentionMIL | None]:
    """The network model selection looks at, and the other one (MT's; None for most methods)."""
    return methods.hooks(cfg.method).networks(fs.model, fs.teacher, cfg)


def _begin_train_epoch(fs: FitState, cfg: TrainConfig, train: _Data) -> MethodState:
    """Train mode, and the state a step reads."""
    fs.model.train()
    if fs.teacher is not None:
        fs.teacher.train()  # dropout is the teacher's noise too (Tarvainen & Valpola 2017)
    return MethodState(fs.model, cfg, fs.noise, fs.stage_name, fs.teacher,
                       positives_per_clip=train.positives_per_clip)


def batch_starts(N: int, B: int) -> list[int]:
    """The first clip of each mini-batch of an epoch over ``N`` clips, ``B`` a batch."""
    starts = list(range(0, N, B))
    if len(starts) > 1 and N - starts[-1] == 1:
        starts.pop()  # a lone clip cannot be batch-normalised when T = 1; it is seen next epoch
    return starts


def _validate(model: AttentionMIL, data: _Data, split: Split, taxonomy: Taxonomy | None,
              prefix: str = "val", thresholds: np.ndarray | None = None) -> tuple[float, dict[str, float]]:
    """Loss (BCE over observed labels) and metrics of one split, in eval mode; ``thresholds``:
    f1_macro_tuned's, tuned on the validation split (None: on this split, the validation one)."""
    scores = predict(model, data.X)
    loss = float(masked_bce(torch.from_numpy(scores), data.Y.cpu(), data.M.cpu()))
    return loss, evaluate(split, scores, prefix, taxonomy, thresholds)


def _result(fs: FitState, ds: Dataset, cfg: TrainConfig) -> FitResult:
    def net(state: dict[str, Tensor] | None) -> AttentionMIL | None:
        return None if state is None else _network_from(state, fs.model)

    last, last_other = _selected(fs, cfg)
    best = fs.best_model if fs.best_model is not None else clone_state(last)
    best_other = fs.best_other if fs.best_model is not None else (
        None if last_other is None else clone_state(last_other))
    return FitResult(
        history=fs.history,
        best=fs.best_logs if fs.best_logs is not None else fs.history[-1],
        model=net(best),
        cfg=cfg,
        other=net(best_other),
        le_teacher=net(fs.method.get("le_teacher")),
    )


def evaluate_fit(result: FitResult, ds: Dataset) -> dict[str, float]:
    """Validation and test loss and metrics of the selected model (MT: and of the other
    network, their names ending in ``result.other_suffix``)."""
    out: dict[str, float] = {}
    nets = [(result.model, "")] + ([(result.other, result.other_suffix)] if result.other else [])
    taxonomy = taxonomy_of(ds)
    # f1_macro_tuned: each network's thresholds are tuned on the validation labels, then tested.
    valid = _Data.of(ds.valid)
    thresholds = {suffix: tuned_thresholds(ds.valid.Y, predict(net, valid.X), ds.valid.M)
                  for net, suffix in nets}
    for prefix, split in (("val", ds.valid), ("test", ds.test)):
        data = _Data.of(split)
        for net, suffix in nets:
            loss, metrics = _validate(net, data, split, taxonomy, prefix, thresholds[suffix])
            out[f"{prefix}/loss{suffix}"] = loss
            out |= {k + suffix: v for k, v in metrics.items()}
    return out


__all__ = ["FitResult", "Member", "Trainer", "evaluate_fit", "fit", "lr_at", "other_suffix", "stream_seed"]
