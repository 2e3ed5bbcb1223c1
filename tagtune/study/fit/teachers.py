"""LE's stage-1 teacher, trained once per key and shared by every trial that can use it.

LE's teacher is a B0 fit (Gururani & Lerch 2021, Sec. 3.2). What it learns depends on the
data, the proportion of labels removed and the seed (which labels are removed, the initial
weights, the batch order, the dropout noise) and on its own training settings, never on
gamma, which only acts after it. A study searches LE's gamma (and lr) with many trials per
cell: each would retrain the same teacher. So, in a study, the teacher's settings are
fixed -- the paper's lr (``TEACHER_LR``) and the trial's other fit settings (epochs,
batch size, schedule, patience, model) -- and trials that share a key share one teacher:

    key = sha256(dataset fingerprint, the teacher's TrainConfig (method b0, missing, seed, ...))

The cache lives in the study's storage (``STUDY_DIR/le-teachers/KEY/``: ``teacher.pt``,
``meta.json``; ``trainings.jsonl`` logs every stage-1 training). Storage, not the object
store, because it outlives a driver restart (``tagtune study resume``) and is visible from
every node anyway (a multi-node study needs shared storage). The first trial that needs a
key takes a lock file (``O_CREAT | O_EXCL``), trains, writes the teacher atomically and
releases the lock; the others wait for ``teacher.pt``. The holder touches the lock every
epoch; a lock untouched for ``stale_after_s`` (its node died), or held under the waiting
trial's own id (a retried trial), is taken over. Worst case a teacher is trained twice
(two waiters break one stale lock at once): both write the same deterministic weights.
A waiting trial holds its CPU idle for at most one teacher's training: K trials of a key
train E + K x E epochs instead of 2 x K x E.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tagtune.study import atomic
from tagtune.study.config import PARAMS, TrainConfig, replace, to_dict
from tagtune.study.data import Dataset
from tagtune.study.methods import hooks, stages
from tagtune.study.methods.le import TEACHER_LR  # declared by LE, whose teacher it is
from tagtune.study.objective import LEGACY

TEACHER_FILE, META_FILE, LOCK_FILE, LOG_FILE = "teacher.pt", "meta.json", "lock", "trainings.jsonl"
# Every method parameter at its default: in the key as when a run's config held them all, so that
# the keys of studies from before stay their teachers' keys (B0 reads none of them).
_KEYED_DEFAULTS = {name: p.default for name, p in PARAMS.items()}


def teacher_config(cfg: TrainConfig) -> TrainConfig:
    """The B0 fit that is LE's stage 1 in a study: the trial's settings at the stage-1 lr.

    ``le_teacher_lr`` means what it means in a fit (None: ``lr``), but a shared teacher needs
    one lr for every trial of a cell, whatever lr they search: a config that leaves it None is
    fixed to TEACHER_LR first, as a study does (``StudySettings.base_config``). Fields that B0
    does not read (the method's parameters) are not B0's, so they stay out of the key.
    """
    if cfg.params.le_teacher_lr is None:
        cfg = replace(cfg, le_teacher_lr=TEACHER_LR)
    lr = hooks(cfg.method).stage_lr(cfg, stages(cfg.method)[0])
    return replace(cfg, method="b0", lr=lr, params=None)


def teacher_key(ds: Dataset, cfg: TrainConfig) -> str:
    """The cache key of ``cfg``'s teacher on ``ds`` (``threads`` aside: it changes no result)."""
    d = {**_KEYED_DEFAULTS, **to_dict(teacher_config(cfg))}
    d.pop("threads")
    if d.get("objective") == LEGACY:  # keys from before the setting stay the keys of their teachers
        d.pop("objective")
    blob = json.dumps({"data": ds.fingerprint, "teacher": d}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TeacherCache:
    """Teachers by key under ``root``, safe for concurrent trials on any node sharing ``root``."""

    def __init__(self, root: str | Path, stale_after_s: float = 120.0, poll_s: float = 0.5):
        self.root = Path(root)
        self.stale_after_s, self.poll_s = stale_after_s, poll_s

    def get(self, ds: Dataset, cfg: TrainConfig, owner: str = "") -> dict[str, Tensor]:
        """The state dict of ``cfg``'s teacher: read from the cache, or trained here once.

        ``owner``: who asks (a trial id); a lock held under the same name is its own,
        left by an earlier attempt that died, and is taken over at once.
        """
        key = teacher_key(ds, cfg)
        where = self.root / key
        where.mkdir(parents=True, exist_ok=True)
        lock = where / LOCK_FILE
        me = f"{owner or 'anonymous'} {socket.gethostname()} {os.getpid()}"
        while True:
            if (where / TEACHER_FILE).is_file():
                return torch.load(where / TEACHER_FILE, weights_only=True)
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._maybe_break(lock, owner)
                time.sleep(self.poll_s)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            try:
                if (where / TEACHER_FILE).is_file():  # written between our look and our lock
                    continue
                return self._train(ds, cfg, key, where, lock, me)
            finally:
                lock.unlink(missing_ok=True)

    def _maybe_break(self, lock: Path, owner: str) -> None:
        try:
            holder = lock.read_text().split(" ")[0]
            age = time.time() - lock.stat().st_mtime
        except (OSError, IndexError):
            return  # released meanwhile
        if (owner and holder == owner) or age > self.stale_after_s:
            # Renamed, not unlinked: of several waiters breaking it at once, one succeeds.
            try:
                lock.rename(lock.with_name(f"{LOCK_FILE}.broken-{os.getpid()}-{time.time_ns()}"))
            except OSError:
                pass

    def _train(self, ds: Dataset, cfg: TrainConfig, key: str, where: Path, lock: Path,
               me: str) -> dict[str, Tensor]:
        from tagtune.study.fit.train import fit

        tcfg = teacher_config(cfg)
        t0 = time.perf_counter()

        def heartbeat(logs: dict[str, Any], save) -> None:
            try:
                os.utime(lock)
            except OSError:  # broken by a waiter that took us for dead: train on regardless
                pass

        result = fit(ds, tcfg, on_epoch=heartbeat)
        state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
        seconds = time.perf_counter() - t0
        tmp = where / f"{TEACHER_FILE}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        atomic.fsync_file(tmp)
        meta = {"key": key, "data": ds.fingerprint, "config": to_dict(tcfg), "trained_by": me,
                "seconds": round(seconds, 3), "epochs": len(result.history),
                "selected_epoch": result.best["epoch"], "val/loss": result.best["val/loss"]}
        atomic.write_json(where / META_FILE, meta, indent=2)
        tmp.replace(where / TEACHER_FILE)  # atomic: a waiter never reads half a teacher
        with open(self.root / LOG_FILE, "a") as f:
            f.write(json.dumps({"key": key, "by": me, "seconds": meta["seconds"]}) + "\n")
        return state

    def trainings(self) -> list[dict[str, Any]]:
        """Every stage-1 training this cache ran, in order (for tests and the bench)."""
        path = self.root / LOG_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["TEACHER_LR", "TeacherCache", "teacher_config", "teacher_key"]
