"""The fit loop's complete state, and writing/reading it to/from a directory.

``save_state`` writes everything :func:`tagtune.study.fit.train.fit` needs to continue a
run exactly where it stopped: networks, optimizer, the best model so far, the stage,
early-stopping counters, the method's own state (LE's teacher), the training mask (LE's
enhanced one), the random streams and the history. Resuming and training on gives bitwise
the weights and history of an uninterrupted run.

Across devices (a state written on a GPU resumed on a CPU, or back): tensors are read onto
the CPU and copied into the networks of wherever the run resumes; the optimizer's moments are
carried over exactly (the CPU's one flat buffer, :class:`~tagtune.study.nn.fast.FlatAdam`, cut
into torch Adam's per-parameter state, or joined back); the batch order stream is a CPU
generator on both, so it resumes exactly. The dropout noise stream cannot cross: a CUDA
generator (Philox: seed and offset) and a CPU one (Mersenne Twister) have different states, so
there the noise restarts from a seed of its own, (seed, stage, epochs done) -- the run goes on
correctly, but is not bitwise the uninterrupted run (it would not be anyway: the two devices
round differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tagtune.study import atomic
from tagtune.study.config import ConfigError, TrainConfig, from_dict, to_dict
from tagtune.study.nn.model import AttentionMIL

STATE_FILE = "state.pt"
VERSION = 2  # 2: the stage's optimizer step count (MT's EMA warm-up); best_other


@dataclass
class FitState:
    """Everything that changes while fitting."""

    stages: tuple[str, ...]
    """All stages of the method (LE: teacher, student; others: main)."""
    stage: int
    """Index of the current stage in ``stages``."""
    model: AttentionMIL
    """The network being optimised (MT: the student)."""
    optimizer: torch.optim.Optimizer
    batches: torch.Generator
    """Stream of the batch order."""
    noise: torch.Generator
    """Stream of the dropout noise."""
    train_M: Tensor
    """(N, C) float training mask in use: the observed labels; LE's student: the enhanced mask."""
    teacher: AttentionMIL | None = None
    """MT: the EMA teacher."""
    stage_epoch: int = 0
    """Epochs completed in the current stage."""
    stopped: bool = False
    """The current stage ended early (patience)."""
    best_loss: float = math.inf
    best_logs: dict[str, Any] | None = None
    best_model: dict[str, Tensor] | None = None
    """State of the selected network of the current stage (MT: the teacher)."""
    best_other: dict[str, Tensor] | None = None
    """MT: the network not selected (the student, or the teacher), at the selected epoch."""
    steps: int = 0
    """Optimizer steps taken in the current stage (MT's EMA warm-up counts them)."""
    bad_epochs: int = 0
    """Epochs since the validation loss last improved."""
    method: dict[str, Any] = field(default_factory=dict)
    """What the method keeps for itself, under its own names (LE: ``le_teacher``, the selected
    stage-1 network's state, set as the student's stage begins; ``FitResult.le_teacher`` returns
    it); saved and restored with the rest, read by no one else."""
    method_logs: dict[str, float] = field(default_factory=dict)
    """Numbers the method adds to every epoch's logs from then on (LE: ``le/masked_fraction``)."""
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage_name(self) -> str:
        return self.stages[self.stage]


def clone_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """A detached copy of a module's state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def save_state(fs: FitState, cfg: TrainConfig, directory: str | Path) -> Path:
    """Write the complete state into ``directory`` (created; other files there are kept)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": VERSION,
        "cfg": to_dict(cfg),
        "stages": list(fs.stages),
        "stage": fs.stage,
        "stage_epoch": fs.stage_epoch,
        "stopped": fs.stopped,
        "best_loss": fs.best_loss,
        "best_logs": fs.best_logs,
        "best_model": fs.best_model,
        "best_other": fs.best_other,
        "steps": fs.steps,
        "bad_epochs": fs.bad_epochs,
        "model": fs.model.state_dict(),
        "optimizer": fs.optimizer.state_dict(),
        "teacher": None if fs.teacher is None else fs.teacher.state_dict(),
        "method": fs.method,
        "method_logs": fs.method_logs,
        "train_M": fs.train_M,
        "rng": {
            "batches": fs.batches.get_state(),
            "noise": fs.noise.get_state(),
            "noise_device": fs.noise.device.type,
            "torch": torch.get_rng_state(),
        },
        "history": fs.history,
    }
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    atomic.fsync_file(tmp)
    tmp.replace(directory / STATE_FILE)  # atomic: a reader never sees half a state
    return directory / STATE_FILE


def load_payload(directory: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read a saved state onto the CPU; refuse one written with a different config (threads,
    device, precision and the deterministic switch aside: they change where and how, not what)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise ConfigError("resume", f"no {STATE_FILE} in {directory}")
    payload = torch.load(path, weights_only=True, map_location="cpu")
    if payload.get("version") != VERSION:
        raise ConfigError("resume", f"{path}: unsupported state version {payload.get('version')}")
    saved, now = dict(payload["cfg"]), to_dict(cfg)
    try:  # fields added since the state was written take their defaults
        saved = to_dict(from_dict(TrainConfig, saved))
    except ConfigError:
        pass  # an unknown or invalid field: reported as a difference below
    for name in _HOW:
        saved.pop(name, None)
        now.pop(name, None)
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError("resume", f"{path} was written with a different config ({', '.join(diff)})")
    return payload


def restore(fs: FitState, payload: dict[str, Any]) -> None:
    """Load ``payload`` into ``fs``, whose networks and optimizer were built for its stage."""
    fs.model.load_state_dict(payload["model"])
    params = [p for p in fs.model.parameters() if p.requires_grad]
    flat = len(fs.optimizer.param_groups[0]["params"]) == 1
    fs.optimizer.load_state_dict(optimizer_state(payload["optimizer"], params, flat))
    if fs.teacher is not None:
        fs.teacher.load_state_dict(payload["teacher"])
    for name in ("stage_epoch", "stopped", "best_loss", "best_logs", "best_model", "best_other",
                 "steps", "bad_epochs", "train_M", "history"):
        setattr(fs, name, payload[name])
    if "method" in payload:
        fs.method, fs.method_logs = payload["method"], payload["method_logs"]
    else:  # written before the method's state had a place of its own: LE's two fields
        fs.method = {} if payload["le_teacher"] is None else {"le_teacher": payload["le_teacher"]}
        fs.method_logs = ({} if payload["masked_fraction"] is None
                          else {"le/masked_fraction": payload["masked_fraction"]})
    fs.train_M = fs.train_M.to(params[0].device)
    fs.batches.set_state(payload["rng"]["batches"])
    if payload["rng"].get("noise_device", "cpu") == fs.noise.device.type:
        fs.noise.set_state(payload["rng"]["noise"])
    else:
        fs.noise.manual_seed(crossed_noise_seed(payload["cfg"]["seed"], fs.stage, fs.stage_epoch))
    torch.set_rng_state(payload["rng"]["torch"])


# How a run computes, not what: a state resumes under other values of these. precision too: the
# state holds fp32 master weights and moments whichever precision wrote it (tagtune.study.nn.precision).
_HOW = ("threads", "device", "deterministic", "precision")


def seed63(*entropy: int) -> int:
    """A 63-bit seed drawn from ``entropy`` (numpy's SeedSequence): a torch.Generator's seed."""
    state = np.random.SeedSequence(list(entropy)).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


NOISE_STREAM = 3
"""The dropout noise stream's number in the seed entropy (tagtune.study.fit.train's streams)."""


def crossed_noise_seed(seed: int, stage: int, stage_epoch: int) -> int:
    """The dropout noise stream's seed after a resume on another kind of device."""
    return seed63(seed, NOISE_STREAM, stage, stage_epoch, 1)


def optimizer_state(saved: dict[str, Any], params: list[Tensor], flat: bool) -> dict[str, Any]:
    """``saved`` (an Adam state dict) in the form of the optimizer resuming it: over one flat
    parameter holding ``params`` (``flat``: FlatAdam, the CPU path) or over ``params`` one by one
    (torch Adam, the generic path); converted exactly where it was written in the other form."""
    group, state = saved["param_groups"][0], saved["state"]
    ids = group["params"]
    if (len(ids) == 1) == flat or len(params) == 1:
        return saved
    sizes = [p.numel() for p in params]
    if flat:  # per parameter -> one buffer, in the parameters' order (FlatAdam's)
        if len(ids) != len(params):
            raise ConfigError("resume", f"optimizer state for {len(ids)} parameters, "
                              f"the model has {len(params)}")
        moments = {k: torch.cat([state[i][k].reshape(-1) for i in ids]) for k in ("exp_avg", "exp_avg_sq")}
        new = {0: {"step": state[ids[0]]["step"].clone(), **moments}} if state else {}
        return {"state": new, "param_groups": [{**group, "params": [0]}]}
    one = state.get(ids[0])  # one buffer -> per parameter
    per: dict[int, dict[str, Tensor]] = {}
    if one:
        if one["exp_avg"].numel() != sum(sizes):
            raise ConfigError("resume", f"optimizer state of {one['exp_avg'].numel()} values, "
                              f"the model has {sum(sizes)}")
        pieces = {k: one[k].split(sizes) for k in ("exp_avg", "exp_avg_sq")}
        for i, p in enumerate(params):
            per[i] = {"step": one["step"].clone(),
                      **{k: v[i].reshape(p.shape).clone() for k, v in pieces.items()}}
    return {"state": per, "param_groups": [{**group, "params": list(range(len(params)))}]}


__all__ = ["STATE_FILE", "FitState", "clone_state", "crossed_noise_seed", "load_payload", "optimizer_state",
           "restore", "save_state"]
