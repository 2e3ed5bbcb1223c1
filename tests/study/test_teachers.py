"""LE's shared teacher: what the key depends on, equal results, once per key, stale locks."""

from __future__ import annotations

import math
import os
import threading

import pytest
import torch

from tagtune.study.config import ModelConfig, TrainConfig, replace
from tagtune.study.fit.teachers import (
    LOCK_FILE,
    TEACHER_LR,
    TeacherCache,
    teacher_config,
    teacher_key,
)
from tagtune.study.fit.train import fit
from tagtune.study.methods.registry import as_flat

LE = TrainConfig(method="le", epochs=2, batch_size=16, lr=TEACHER_LR, lr_decay_epochs=(),
                 gamma=30.0, missing=0.2, model=ModelConfig(layers=1, hidden=8, dropout=0.3))


def _norm(history: list[dict]) -> list[dict]:
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in h.items()}
            for h in history]


def test_key_ignores_what_stage_one_does_not_use(tiny_dataset):
    key = teacher_key(tiny_dataset, LE)
    for same in (dict(gamma=90.0), dict(lr=0.05), dict(threads=2), dict(alpha=0.9, beta=1.0)):
        assert teacher_key(tiny_dataset, replace(LE, **same)) == key, same
    for other in (dict(missing=0.4), dict(seed=1), dict(epochs=3), dict(batch_size=8),
                  dict(model=ModelConfig(layers=1, hidden=4, dropout=0.3))):
        assert teacher_key(tiny_dataset, replace(LE, **other)) != key, other
    tcfg = teacher_config(replace(LE, lr=0.05, gamma=90.0))
    assert (tcfg.method, tcfg.lr, as_flat(tcfg.params)) == ("b0", TEACHER_LR, {})  # no gamma: B0 reads none
    # A config that fixes its teacher's lr (an exported one) names that teacher.
    assert teacher_key(tiny_dataset, replace(LE, le_teacher_lr=TEACHER_LR)) == key
    assert teacher_config(replace(LE, le_teacher_lr=0.02)).lr == 0.02
    assert teacher_key(tiny_dataset, replace(LE, le_teacher_lr=0.02)) != key


def test_shared_teacher_gives_the_student_of_an_own_teacher(tiny_dataset, tmp_path):
    """With the trial's lr equal to the teacher's, sharing changes nothing, bitwise; and a
    config with le_teacher_lr set trains (alone) the very teacher the study shared."""
    own = fit(tiny_dataset, LE)
    teacher = TeacherCache(tmp_path).get(tiny_dataset, LE)
    shared = fit(tiny_dataset, LE, le_teacher=teacher)
    students = [h for h in own.history if h["stage"] == "student"]
    assert _norm(shared.history) == _norm(students)
    assert [h["epoch"] for h in shared.history] == [3, 4]  # the counter still counts stage 1
    assert all(torch.equal(shared.model.state_dict()[k], v) for k, v in own.model.state_dict().items())
    exported = replace(LE, lr=0.02, le_teacher_lr=TEACHER_LR)  # a trial that searched lr 0.02
    alone = fit(tiny_dataset, exported)
    again = fit(tiny_dataset, exported, le_teacher=TeacherCache(tmp_path).get(tiny_dataset, exported))
    assert _norm(again.history) == _norm([h for h in alone.history if h["stage"] == "student"])


def test_concurrent_askers_train_stage_one_once(tiny_dataset, tmp_path):
    cache = TeacherCache(tmp_path, poll_s=0.05)
    got: list[dict] = []
    askers = [threading.Thread(target=lambda i=i: got.append(cache.get(
        tiny_dataset, replace(LE, gamma=10.0 * (i + 1)), owner=f"t{i}"))) for i in range(3)]
    for t in askers:
        t.start()
    for t in askers:
        t.join(timeout=120)
    assert len(got) == 3 and len(cache.trainings()) == 1
    assert all(torch.equal(g[k], got[0][k]) for g in got for k in g)
    cache.get(tiny_dataset, replace(LE, seed=1))  # another key: its own training
    assert len(cache.trainings()) == 2
    assert not list(tmp_path.glob(f"*/{LOCK_FILE}"))


@pytest.mark.timeout(120)  # a lock never taken over fails here instead of hanging the suite
def test_a_dead_holders_lock_is_taken_over(tiny_dataset, tmp_path):
    key = teacher_key(tiny_dataset, LE)
    lock = tmp_path / key / LOCK_FILE
    lock.parent.mkdir(parents=True)
    lock.write_text("someone otherhost 1")
    cache = TeacherCache(tmp_path, stale_after_s=0.5, poll_s=0.05)
    cache.get(tiny_dataset, LE, owner="me")  # the lock goes stale after 0.5 s of silence
    (broken,) = lock.parent.glob(f"{LOCK_FILE}.broken-*")  # set aside, not deleted
    assert broken.read_text() == "someone otherhost 1" and not lock.exists()
    (training,) = cache.trainings()
    assert training["key"] == key and training["by"].startswith("me ")

    seed1 = replace(LE, seed=1)
    lock = tmp_path / teacher_key(tiny_dataset, seed1) / LOCK_FILE
    lock.parent.mkdir(parents=True)
    lock.write_text("me thishost 1")  # my own earlier attempt, killed mid-training
    os.utime(lock)
    slow = TeacherCache(tmp_path, stale_after_s=3600, poll_s=0.05)
    slow.get(tiny_dataset, seed1, owner="me")  # not stale, but mine: taken over at once
    assert len(slow.trainings()) == 2


@pytest.mark.timeout(120)
def test_a_live_holders_lock_is_waited_for(tiny_dataset, tmp_path):
    lock = tmp_path / teacher_key(tiny_dataset, LE) / LOCK_FILE
    lock.parent.mkdir(parents=True)
    lock.write_text("someone otherhost 1")
    cache = TeacherCache(tmp_path, stale_after_s=3600, poll_s=0.05)
    got: list[dict] = []
    waiter = threading.Thread(target=lambda: got.append(cache.get(tiny_dataset, LE, owner="me")))
    waiter.start()
    waiter.join(timeout=1.0)  # however fast this machine, a live holder's lock is not taken
    assert waiter.is_alive() and not got and cache.trainings() == [] and lock.exists()
    lock.unlink()  # the holder gave up without a teacher: the waiter trains it
    waiter.join(timeout=100)
    assert len(got) == 1 and len(cache.trainings()) == 1
