"""Fused trials in a study: a cell's Tune trials trained N at a time as one stacked network.

Every fused trial stays an ordinary Ray Tune trial: its own trial id, config, Optuna trial,
ASHA decisions, MLflow run, checkpoints and resume. What changes is where its epochs run. The
trial itself (:func:`member_trial`) is a light process holding no CPU
(``MEMBER_RESOURCES``); it hands its config to a :class:`StackActor`, an actor holding one trial's
resources (its CPUs and share of a GPU), which trains every member it holds one epoch at a time
as one :class:`tagtune.study.fit.stacked.Stack`, and answers a member at the first epoch the
member will report (an ASHA rung, a checkpoint, the end, or ``EVERY_S`` x the stack's size since
its last answer)
with the logs of every epoch since its ask (and, where a checkpoint is due, the state). The
member reports them to Tune exactly as a trial trained alone would
(:class:`tagtune.launch.trainable.Reporter`: the same keys, the same checkpoints). Its process
needs no torch (a fused study's workers preload only this module).

- Rounds: a stack waits until every member it holds has asked for its next epochs (Tune has
  taken the last one's report and let it go on), at most ``GRACE_S``; a member's ask spans as
  many rounds as its epochs up to the answer; a member that does not come in
  time (a dead process) is trained when it asks again. Which members share a round changes no
  member's numbers beyond rounding (each member's arithmetic is its own).
- Leaving: ASHA stops a member inside its ``tune.report`` (Tune ends the trial's thread there);
  the member tells its stack on the way out and is dropped from the next round. A member whose
  fit ended (every epoch, or patience) leaves the same way.
- :class:`StackRegistry` (one per study phase, no resources) deals members to stacks: a cell's
  members that share what a stack must (``config.stack_key``: the network, batch size, epochs,
  device, precision; a searched ``arch`` splits a cell) fill one stack up to ``fuse``, then the
  next; a stack whose members have all left is
  ended, giving its resources back. The searcher deals a cell's trials ``fuse`` in a row (a
  batch ask of Optuna's TPE with the constant liar), so a stack fills with one cell's trials.
- Resume: a member's checkpoint is an ordinary trial's (fused or not, it resumes either way).
  After a kill, Tune restores each member trial from its checkpoint and it joins a new stack.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray import tune

from tagtune.launch.trainable import EVERY_S, Reporter, replayed
from tagtune.study.data import Dataset

MEMBER_RESOURCES = {"cpu": 0, "memory": 2**20}
"""What a member trial asks Ray for: it only waits for its stack. No CPU (a fraction of one would
leave a stack of ``cpus_per_trial`` CPUs unplaceable on a node its members fill); Ray wants some
resource in a trial's request, so a MiB of memory."""
GRACE_S = 30.0
"""The longest a stack's round waits for a member that has not asked for its next epoch."""


def _files(directory: Path) -> dict[str, bytes]:
    """A checkpoint directory's files (a trial's state: a few MB), to cross nodes by value."""
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


def _write(files: dict[str, bytes], directory: Path) -> Path:
    for name, data in files.items():
        (Path(directory) / name).write_bytes(data)
    return Path(directory)


class StackActor:
    """One stack of fused trials: members join with their config, then ask for epochs."""

    def __init__(self, dataset: Dataset, teacher_cache: str | None):
        self.ds, self.teacher_cache = dataset, teacher_cache
        self.stack: Any = None
        self.members: dict[str, Any] = {}  # trial id -> tagtune.study.fit.stacked.Member
        self.configs: dict[str, dict[str, Any]] = {}
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self.waiting: dict[str, asyncio.Future] = {}
        self.answer: set[str] = set()  # asked members with an epoch to report: answered this round
        self.late: set[str] = set()  # missed a round's deadline: not waited for until they ask
        self.round: asyncio.Task | None = None
        self.fused = 0  # members in the round being trained
        # One thread does every piece of training: a Stack is not thread-safe, and the event loop
        # stays free to take members' requests meanwhile.
        self.pool = ThreadPoolExecutor(1)

    async def join(self, trial_id: str, config: dict[str, Any], resume: dict[str, bytes] | None,
                   report_at: tuple[float, ...] | None = None, report_every_s: float = EVERY_S) -> dict:
        """Add a member (from its checkpoint's files where it has one); whether it is already done,
        and its final evaluation then (a replicate resumed at its end). ``report_at``,
        ``report_every_s``: the member's (Reporter's): an ask is answered at the first epoch the
        member will report."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._join, trial_id, config, resume, report_at,
                                          report_every_s)

    def _join(self, trial_id: str, config: dict[str, Any], resume: dict[str, bytes] | None,
              report_at: tuple[float, ...] | None = None, report_every_s: float = EVERY_S) -> dict:
        from tagtune.study.fit.stacked import Stack
        from tagtune.study.fit.teachers import TeacherCache
        from tagtune.study.folder import train_config
        from tagtune.study.methods import shares_teacher

        cfg = train_config(config)
        if self.stack is None:
            self.stack = Stack(self.ds, cfg)
        self.configs[trial_id], self.replies[trial_id] = config, []
        # The member's reporting rules, to know which epoch it will send to Tune: the epochs
        # before it go back with that one, in one answer (a call to the stack and a round's wait
        # for every member an epoch cost more than a fast epoch's training).
        rules = Reporter(config, report_at, report_every_s)

        def on_epoch(logs: dict[str, Any], save) -> None:
            files = None
            if rules.due(int(logs["epoch"])):
                with tempfile.TemporaryDirectory() as tmp:
                    save(Path(tmp))
                    files = _files(Path(tmp))
            self.replies[trial_id].append({"logs": logs, "files": files, "fused": self.fused})
            if rules.reports_now(rules.metrics(logs), files is not None):
                self.answer.add(trial_id)

        with tempfile.TemporaryDirectory() as tmp:
            teacher = None
            if resume is None and shares_teacher(cfg.method) and self.teacher_cache:
                teacher = TeacherCache(self.teacher_cache).get(self.ds, cfg, owner=trial_id)
            member = self.stack.add(cfg, on_epoch, resume=_write(resume, Path(tmp)) if resume else None,
                                    le_teacher=teacher)
        self.members[trial_id] = member
        return self._ending(trial_id)

    def _ending(self, trial_id: str) -> dict:
        from tagtune.study.fit.train import evaluate_fit

        member = self.members[trial_id]
        if member.failed is not None:  # its error alone: its trial fails, its stack-mates go on
            error = member.failed
            return {"done": True, "final": None, "error": f"{type(error).__name__}: {error}"}
        if not member.done:
            return {"done": False, "final": None}
        final = None
        if self.configs[trial_id].get("phase") == "replicate":
            final = evaluate_fit(member.result(), self.ds)
        return {"done": True, "final": final}

    async def epoch(self, trial_id: str) -> dict:
        """Train ``trial_id``'s next epochs (with every other member that asks in time), up to the
        first its member reports: their logs, the state where a checkpoint is due, whether it is
        done."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting[trial_id] = future
        self.late.discard(trial_id)
        if self.round is None or self.round.done():
            self.round = asyncio.ensure_future(self._rounds())
        return await future

    async def leave(self, trial_id: str) -> int:
        """Drop a member (ASHA stopped it, it ended, it failed); the members left."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._leave, trial_id)

    def _leave(self, trial_id: str) -> int:
        member = self.members.pop(trial_id, None)
        if member is not None and member in self.stack.members:
            self.stack.leave(member)
        self.late.discard(trial_id)
        self.answer.discard(trial_id)
        return len(self.members)

    async def _rounds(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            start = time.monotonic()
            while time.monotonic() - start < GRACE_S and self._absent():
                await asyncio.sleep(0.005)
            self.late |= set(self._absent())
            asked = list(self.waiting)  # a member asking meanwhile joins the next round
            try:
                answers = await loop.run_in_executor(self.pool, self._train, asked)
            except Exception as e:  # noqa: BLE001 -- every member of the round hears the error
                for trial_id in asked:
                    self.waiting.pop(trial_id).set_exception(e)
                continue
            for trial_id, answer in answers.items():  # the others go on in the next round
                self.waiting.pop(trial_id).set_result(answer)

    def _absent(self) -> list[str]:
        """Members the round waits for: holding, not done, not asking yet, not late."""
        return [t for t, m in self.members.items()
                if t not in self.waiting and t not in self.late and not m.done and m.failed is None]

    def _train(self, trial_ids: list[str]) -> dict[str, dict]:
        group = [self.members[t] for t in trial_ids if t in self.members]
        self.fused = len([m for m in group if not m.done])
        self.stack.epoch(group)
        answers = {}
        for t in trial_ids:
            if t not in self.members:
                answers[t] = {"epochs": [], "done": True, "final": None}
                continue
            ending = self._ending(t)
            if ending["done"] or t in self.answer:
                self.answer.discard(t)
                replies, self.replies[t] = self.replies.get(t, []), []
                answers[t] = {"epochs": replies, **ending}
        return answers


class StackRegistry:
    """Deals a phase's fused trials to stacks, a cell's members ``fuse`` to a stack."""

    def __init__(self, dataset_ref: list, fuse: int, resources: dict[str, float], teacher_cache: str | None):
        self.ds_ref, self.fuse = dataset_ref[0], fuse
        self.resources, self.teacher_cache = resources, teacher_cache
        self.stacks: list[dict[str, Any]] = []  # {"cell", "key", "actor", "members": set of trial ids}

    def assign(self, cell: str, trial_id: str, key: tuple = ()) -> Any:
        """The stack ``trial_id`` joins: the newest with room of its cell and ``key`` (what a
        stack's members share: tagtune.study.config.stack_key), or a new one."""
        for s in self.stacks:
            if trial_id in s["members"]:  # a retried member: its stack again
                return s["actor"]
        for s in self.stacks:
            if s["cell"] == cell and s["key"] == key and len(s["members"]) < self.fuse:
                s["members"].add(trial_id)
                return s["actor"]
        options = {"num_cpus": self.resources.get("cpu", 1), "num_gpus": self.resources.get("gpu", 0),
                   "max_concurrency": 1000}  # every member's request open at once (async actor)
        actor = ray.remote(StackActor).options(**options).remote(self.ds_ref, self.teacher_cache)
        self.stacks.append({"cell": cell, "key": key, "actor": actor, "members": {trial_id}})
        return actor

    def release(self, trial_id: str) -> None:
        """``trial_id`` left its stack; a stack left empty ends, giving its resources back."""
        for s in list(self.stacks):
            if trial_id in s["members"]:
                s["members"].discard(trial_id)
                s["actor"].leave.remote(trial_id)  # not waited for: the stack may be mid-round
                if not s["members"]:
                    self.stacks.remove(s)
                    ray.kill(s["actor"])

    def close(self) -> None:
        """End every stack left (a phase is over, or was interrupted)."""
        for s in self.stacks:
            ray.kill(s["actor"])
        self.stacks = []


_REGISTRIES: list[Any] = []  # made by this driver, ended by close_registries


def registry(ds: Dataset, fuse: int, resources: dict[str, float], teacher_cache: str | None) -> Any:
    """A phase's StackRegistry actor (no resources of its own); the dataset goes to the object
    store once, and each stack maps it from there."""
    ref = ray.put(ds)
    # In a list: a bare ObjectRef argument would be resolved into a copy of the dataset here.
    actor = ray.remote(StackRegistry).options(num_cpus=0).remote([ref], fuse, resources, teacher_cache)
    _REGISTRIES.append(actor)
    return actor


def close_registries() -> None:
    """End the registries this driver made, and their stacks: a phase's end (its processes would
    otherwise hold their memory, and a stack its CPUs, until Ray shuts down)."""
    while _REGISTRIES:
        actor = _REGISTRIES.pop()
        try:
            ray.get(actor.close.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            pass  # already gone: nothing of it to end
        ray.kill(actor)


def member_trial(config: dict[str, Any], stacks: Any, study_dir: str | None = None,
                 ended: dict[str, dict] | None = None, report_at: tuple[float, ...] | None = None,
                 report_every_s: float = EVERY_S) -> None:
    """The Tune trainable of a fused trial: its epochs run in its stack, its reports are its own.
    ``report_every_s``: its reports' cadence when no decision needs one (a stack's members share a
    slot: ``EVERY_S`` times the stack's size keeps the driver's reports as a solo trial's)."""
    if replayed(ended):
        return
    trial_id = tune.get_context().get_trial_id() or ""
    reporter = Reporter(config, report_at, report_every_s)
    with reporter.resumed(config, study_dir) as state_dir:
        resume = None if state_dir is None else _files(state_dir)
    from tagtune.study.config import stack_key
    from tagtune.study.folder import train_config

    # Keyed by what a stack shares, not by cell alone: a searched network (arch, layers ...)
    # varies within a cell, and a member unlike its stack would fail (Stack.add refuses it).
    key = stack_key(train_config(config))
    stack = ray.get(stacks.assign.remote(config["cell"], trial_id, key))
    try:
        answer = ray.get(stack.join.remote(trial_id, config, resume, report_at, report_every_s))
        while not answer["done"]:
            answer = ray.get(stack.epoch.remote(trial_id))
            for i, epoch in enumerate(answer["epochs"], 1):
                # fused: how many trials trained this epoch as one stack (MLflow shows it per epoch)
                metrics = {**reporter.metrics(epoch["logs"]), "fused": epoch["fused"]}
                files = epoch["files"]
                # The stack answered at the epoch to report, by this trial's rules (its clock too:
                # an answer that took seconds does not make the first of its epochs a report).
                now = None if answer["done"] else i == len(answer["epochs"])
                reporter.epoch(metrics, None if files is None else functools.partial(_write, files), now)
        if answer.get("error"):
            raise RuntimeError(f"fused trial {trial_id}: {answer['error']}")
        reporter.finish(config, lambda: answer["final"])
    finally:  # also when Tune stops the trial inside tune.report (ASHA), or an error
        # Not waited for: Tune gives a stopped trial's thread 2 s to end before it replaces the actor.
        stacks.release.remote(trial_id)


__all__ = ["GRACE_S", "MEMBER_RESOURCES", "StackActor", "StackRegistry", "close_registries", "member_trial",
           "registry"]
