"""Reports only where a decision needs one: ASHA stops the same trials and Optuna hears the same
intermediate values as with a report every epoch, and every epoch reaches the tracking once
(no Ray run: the trainable's Reporter, CellASHA and CellSearcher driven as Tune drives them)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import optuna

from tagtune.launch import trainable
from tagtune.launch.scheduler import CellASHA, TrialScheduler, rungs
from tagtune.launch.searcher import Cell, CellSearcher
from tagtune.launch.trainable import EARLIER, STEP, Reporter

optuna.logging.set_verbosity(optuna.logging.WARNING)
METRIC, MODE = "val/best_loss", "min"
EPOCHS, GRACE, RF, EVERY = 20, 2, 2.0, 7  # rungs at budgets 2, 4, 8, 16; checkpoints 7, 14, 20


def reports(monkeypatch, losses: list[float], report_at) -> list[dict]:
    """What one trial tells Tune, epoch after epoch, through the trainable's Reporter."""
    sent: list[dict] = []
    monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: sent.append(metrics))
    config = {"method": "b1", "epochs": EPOCHS, "checkpoint_every": EVERY, "cell": "b1@0.00"}
    reporter = Reporter(config, report_at)
    for epoch, loss in enumerate(losses, start=1):
        logs = {"epoch": epoch, "stage": "main", "val/loss": loss, "train/loss": 2 * loss}
        reporter.epoch(reporter.metrics(logs), (lambda d: None) if reporter.due(epoch) else None)
    return sent


def run(monkeypatch, curves: dict[str, list[float]], report_at):
    """The curves through a cell's ASHA and Optuna study as Tune would feed them: the trials
    stopped, each trial's intermediate values in Optuna, and the epochs each result carried."""
    asha = CellASHA(max_t=EPOCHS, grace_period=GRACE, reduction_factor=RF)
    asha.set_search_properties(METRIC, MODE)
    search = CellSearcher([Cell("b1", 0.0)], len(curves), metric=METRIC, mode=MODE)
    trials = {}
    for tid in curves:
        search.suggest(tid)
        trials[tid] = SimpleNamespace(trial_id=tid, config={"cell": "b1@0.00"})
        asha.on_trial_add(None, trials[tid])
    stopped, epochs = set(), {tid: [] for tid in curves}
    # One trial after another (ASHA's decisions depend on the order results arrive in: the same
    # order both ways), a trial's reports as Tune hands them over.
    for tid, losses in curves.items():
        for result in reports(monkeypatch, losses, report_at):
            epochs[tid] += [r["epoch"] for r in [*result.get(EARLIER, ()), result]]
            if asha.on_trial_result(None, trials[tid], result) == TrialScheduler.STOP:
                if not result["complete"]:  # at max_t ASHA says STOP too
                    stopped.add(tid)
                search.on_trial_complete(tid, result)  # Tune's own order for a stopped trial
                break
            search.on_trial_result(tid, result)
        else:
            search.on_trial_complete(tid, result)
    values = {t.number: t.intermediate_values for t in search._studies["b1@0.00"].get_trials()}
    return stopped, values, epochs


def test_asha_and_optuna_decide_the_same_with_reports_only_at_decisions(monkeypatch):
    rng = np.random.default_rng(0)
    curves = {f"t{i}": list(np.minimum.accumulate(1 + rng.random() + rng.random(EPOCHS)))
              for i in range(9)}
    every = run(monkeypatch, curves, None)
    decided = run(monkeypatch, curves, rungs(EPOCHS, GRACE, RF))
    assert every[0] == decided[0] and 0 < len(every[0]) < len(curves)  # ASHA stopped some, the same
    assert every[1] == decided[1]  # Optuna: the same value at every step, rungs included
    assert every[2] == decided[2]  # every epoch, once, in order, up to where the trial stopped
    for seen in decided[2].values():
        assert seen == list(range(1, len(seen) + 1))


def test_reports_are_made_only_at_rungs_checkpoints_and_the_end(monkeypatch):
    losses = list(np.linspace(2, 1, EPOCHS))
    sent = reports(monkeypatch, losses, rungs(EPOCHS, GRACE, RF))
    assert [r["epoch"] for r in sent] == [2, 4, 7, 8, 14, 16, 20]
    assert [r[STEP] for r in sent] == [2, 4, 7, 8, 14, 16, 20]
    # The epochs between ride in the next report, each with its own step and keys.
    assert [e["epoch"] for e in sent[2][EARLIER]] == [5, 6]
    assert all(set(e) == set(sent[0]) - {EARLIER} for r in sent for e in r.get(EARLIER, ()))
    assert [r[STEP] for r in reports(monkeypatch, losses, None)] == list(range(1, EPOCHS + 1))


def test_checkpoints_wait_checkpoint_s_after_the_last_one(monkeypatch):
    """Of the epochs checkpoint_every makes due, only one checkpoint_s seconds after the trial's
    last checkpoint (or its start) is one; the last epoch always is. Each epoch here takes 1 s."""
    now = [0.0]
    monkeypatch.setattr(trainable, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: None)

    def checkpoints(checkpoint_s: float | None) -> list[int]:
        now[0] = 0.0
        config = {"method": "b1", "epochs": EPOCHS, "checkpoint_every": EVERY, "cell": "b1@0.00",
                  **({} if checkpoint_s is None else {"checkpoint_s": checkpoint_s})}
        reporter, saved = Reporter(config, rungs(EPOCHS, GRACE, RF)), []
        for epoch in range(1, EPOCHS + 1):
            now[0] += 1.0
            logs = {"epoch": epoch, "stage": "main", "val/loss": 1.0 / epoch, "train/loss": 1.0}
            due = reporter.due(epoch)
            reporter.epoch(reporter.metrics(logs), (lambda d: None) if due else None)
            saved += [epoch] if due else []
        return saved

    assert checkpoints(None) == checkpoints(0) == [7, 14, 20]  # a config from before the setting
    assert checkpoints(10) == [14, 20]  # 7 s after the start: too soon; 14 s: due
    assert checkpoints(8) == [14, 20]
    assert checkpoints(6) == [7, 14, 20]
    assert checkpoints(1000) == [20]


def test_an_epoch_every_s_after_the_last_report_is_reported(monkeypatch):
    """With no decision due, an epoch ``report_every_s`` seconds after the trial's last report goes to Tune
    (the display moves with slow epochs); a fused member's cadence is its stack size times longer,
    so that the driver's reports do not grow with the stack. Each epoch here takes 1 s."""
    now = [0.0]
    monkeypatch.setattr(trainable, "time", SimpleNamespace(monotonic=lambda: now[0]))
    sent: list[dict] = []
    monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: sent.append(metrics))

    def reported(report_every_s: float | None) -> list[int]:
        now[0], sent[:] = 0.0, []
        config = {"method": "b1", "epochs": EPOCHS, "checkpoint_every": 1000, "cell": "b1@0.00"}
        reporter = Reporter(config, (), *([] if report_every_s is None else [report_every_s]))
        for epoch in range(1, EPOCHS + 1):
            now[0] += 1.0
            logs = {"epoch": epoch, "stage": "main", "val/loss": 1.0 / epoch, "train/loss": 1.0}
            reporter.epoch(reporter.metrics(logs), (lambda d: None) if reporter.due(epoch) else None)
        assert [e["epoch"] for r in sent for e in [*r.get(EARLIER, ()), r]] == list(range(1, EPOCHS + 1))
        return [r["epoch"] for r in sent]

    assert reported(None) == list(range(2, EPOCHS + 1, 2))  # EVERY_S = 2: every second epoch
    assert reported(trainable.EVERY_S * 4) == [8, 16, 20]  # a member of a stack of 4
    assert reported(1e9) == [20]  # only the end
