"""A fused study's stack actor on its own (tagtune.launch.fusion.StackActor, its methods called
in-process): rounds, stragglers, leaving, checkpoints due, a member's error kept to itself."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys

import pytest

from tagtune.launch import fusion
from tagtune.study import methods
from tests.conftest import TINY_TRAIN

CONFIG = {**TINY_TRAIN, "model": {"layers": 2, "hidden": 6}, "method": "b1", "missing": 0.3, "epochs": 3,
          "checkpoint_every": 2, "cell": "b1@0.30", "phase": "search"}


def _run(coroutine):
    return asyncio.run(coroutine)


async def _epochs(actor, trial_id, n):
    return [await actor.epoch(trial_id) for _ in range(n)]


def test_members_asking_together_train_as_one_round(tiny_dataset):
    async def go():
        actor = fusion.StackActor(tiny_dataset, None)
        for k, lr in enumerate((1e-3, 3e-3)):
            assert await actor.join(f"t{k}", {**CONFIG, "lr": lr, "seed": k}, None) == {"done": False,
                                                                                        "final": None}
        return await asyncio.gather(_epochs(actor, "t0", 3), _epochs(actor, "t1", 3))

    a, b = _run(go())
    for answers in (a, b):
        assert [x["done"] for x in answers] == [False, False, True]
        epochs = [x["epochs"][0] for x in answers]
        assert [e["logs"]["epoch"] for e in epochs] == [1, 2, 3]
        assert [e["fused"] for e in epochs] == [2, 2, 2]  # every epoch, both in one stack
        assert [e["files"] is not None for e in epochs] == [False, True, True]  # due at 2 and at the end
        assert "state.pt" in epochs[1]["files"]
    assert a[0]["epochs"][0]["logs"]["val/loss"] != b[0]["epochs"][0]["logs"]["val/loss"]


def test_an_ask_is_answered_at_the_first_epoch_its_member_reports(tiny_dataset):
    # A rung at budget 2, checkpoints too far apart to come before the end: epochs 1-2 in one
    # answer, 3 (the end) in the next, however many rounds that takes.
    async def go():
        actor = fusion.StackActor(tiny_dataset, None)
        for k in range(2):
            await actor.join(f"t{k}", {**CONFIG, "seed": k, "checkpoint_s": 3600}, None, report_at=(2.0,))
        return await asyncio.gather(_epochs(actor, "t0", 2), _epochs(actor, "t1", 2))

    for answers in _run(go()):
        assert [[e["logs"]["epoch"] for e in x["epochs"]] for x in answers] == [[1, 2], [3]]
        assert [x["done"] for x in answers] == [False, True]
        assert [e["files"] is not None for x in answers for e in x["epochs"]] == [False, False, True]
        assert {e["fused"] for x in answers for e in x["epochs"]} == {2}


def test_a_straggler_is_not_waited_for_past_the_grace(tiny_dataset, monkeypatch):
    monkeypatch.setattr(fusion, "GRACE_S", 0.2)

    async def go():
        actor = fusion.StackActor(tiny_dataset, None)
        await actor.join("t0", {**CONFIG, "seed": 0}, None)
        await actor.join("t1", {**CONFIG, "seed": 1}, None)  # joins, never asks (its process died)
        first = await asyncio.wait_for(actor.epoch("t0"), timeout=30)
        second = await asyncio.wait_for(actor.epoch("t0"), timeout=30)  # t1 is late now: no wait
        return first, second

    first, second = _run(go())
    assert first["epochs"][0]["fused"] == 1 and second["epochs"][0]["logs"]["epoch"] == 2


def test_a_member_that_leaves_is_not_waited_for(tiny_dataset, monkeypatch):
    monkeypatch.setattr(fusion, "GRACE_S", 60.0)  # a wait for t1 would time the test out

    async def go():
        actor = fusion.StackActor(tiny_dataset, None)
        await actor.join("t0", {**CONFIG, "seed": 0}, None)
        await actor.join("t1", {**CONFIG, "seed": 1}, None)
        await asyncio.gather(actor.epoch("t0"), actor.epoch("t1"))
        assert await actor.leave("t1") == 1  # ASHA stopped it
        return await asyncio.wait_for(actor.epoch("t0"), timeout=20)

    assert _run(go())["epochs"][0]["fused"] == 1


def test_a_member_error_is_its_own(tiny_dataset):
    async def go():
        actor = fusion.StackActor(tiny_dataset, None)
        await actor.join("bad", {**CONFIG, "seed": 0}, None)
        await actor.join("good", {**CONFIG, "seed": 1}, None)

        def broken(batch, state):
            raise FloatingPointError("diverged")

        member = actor.members["bad"]
        member.hooks = dataclasses.replace(methods.hooks("b1"), step=broken)
        bad, good = await asyncio.gather(actor.epoch("bad"), actor.epoch("good"))
        rest = await _epochs(actor, "good", 2)
        return bad, good, rest

    bad, good, rest = _run(go())
    assert bad["done"] and bad["error"] == "FloatingPointError: diverged" and bad["epochs"] == []
    assert "error" not in good and [x["epochs"][0]["logs"]["epoch"] for x in (good, *rest)] == [1, 2, 3]
    assert rest[-1]["done"]


def test_a_replicate_resumed_at_its_end_is_done_at_join_with_its_test_metrics(tiny_dataset):
    async def go():
        actor = fusion.StackActor(tiny_dataset, None)
        cfg = {**CONFIG, "seed": 0, "phase": "replicate"}
        await actor.join("r", cfg, None)
        answers = await _epochs(actor, "r", 3)
        files = answers[-1]["epochs"][0]["files"]
        again = fusion.StackActor(tiny_dataset, None)
        return answers[-1], await again.join("r2", cfg, files)

    last, joined = _run(go())
    assert last["done"] and "test/loss" in last["final"]
    assert joined["done"] and joined["final"] == pytest.approx(last["final"])


def test_tune_starts_as_many_members_as_the_stacks_that_fit_hold(ray_session, tmp_path):
    from tagtune.launch.study import max_concurrent
    from tagtune.study.folder import StudySettings

    def settings(**kw):
        return StudySettings(data=str(tmp_path / "d.h5"), **kw)

    assert max_concurrent(settings()) is None  # unfused: Tune's own resource accounting
    assert max_concurrent(settings(fuse=4)) == 8  # 2 CPUs: two stacks of one CPU, 4 members each
    assert max_concurrent(settings(fuse=4, cpus_per_trial=2)) == 4
    assert max_concurrent(settings(fuse="auto")) is None  # auto is off without GPUs


def test_stacks_are_keyed_by_what_a_stack_shares_not_by_cell_alone(monkeypatch):
    """A cell whose study searches the network (``arch``) deals its trials to one stack per network:
    a paper trial joining a residual stack would fail (Stack.add refuses it) and be retried."""
    from tagtune.study.config import stack_key
    from tagtune.study.folder import train_config

    made = []

    class _Actor:  # what ray.remote(StackActor).options(...).remote(...) gives: a new stack
        def options(self, **_):
            return self

        def remote(self, *_):
            made.append(object())
            return made[-1]

    monkeypatch.setattr(fusion.ray, "remote", lambda _: _Actor())
    registry = fusion.StackRegistry([None], fuse=4, resources={"cpu": 1}, teacher_cache=None)
    keys = {arch: stack_key(train_config({**CONFIG, "arch": arch})) for arch in ("residual", "paper")}
    assert keys["residual"] != keys["paper"]
    dealt = {t: registry.assign("b1@0.30", t, keys[arch])
             for t, arch in [("t0", "residual"), ("t1", "paper"), ("t2", "residual"), ("t3", "paper")]}
    assert len(made) == 2
    assert dealt["t0"] is dealt["t2"] and dealt["t1"] is dealt["t3"] and dealt["t0"] is not dealt["t1"]
    assert registry.assign("b1@0.30", "t1", keys["paper"]) is dealt["t1"]  # a retried member: its stack
    assert registry.assign("b0@0.30", "t4", keys["residual"]) not in dealt.values()  # another cell


MEMBER = """
import sys
from types import SimpleNamespace
from tagtune.launch import fusion
fusion.ray.get = lambda value: value  # the stack's answers, given at once
calls = []
def method(name, answer=None):
    return SimpleNamespace(remote=lambda *a: calls.append(name) or answer)
stack = SimpleNamespace(join=method("join", {"done": True, "final": None, "error": "stop here"}))
stacks = SimpleNamespace(assign=method("assign", stack), release=method("release"))
try:
    fusion.member_trial(%r, stacks, report_at=(2.0,))
except RuntimeError as e:
    assert "stop here" in str(e), e
assert calls == ["assign", "join", "release"], calls
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tagtune"))
print("ok")
"""


def test_a_fused_trials_process_imports_no_torch():
    """A fused trial only waits for its stack: its process (one per member, slots x fuse of them)
    runs member_trial (here up to its stack's answer) without torch (~1-2 s of CPU and hundreds
    of MB a process); a fused study's workers preload only this module."""
    from tagtune.launch.ray_start import FUSED_PRELOAD

    assert FUSED_PRELOAD[1] == fusion.__name__
    done = subprocess.run([sys.executable, "-c", MEMBER % (CONFIG,)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
