"""CellASHA: a trial is stopped only by comparison with trials of its own cell (no Ray run)."""

from __future__ import annotations

from types import SimpleNamespace

from tagtune.launch.scheduler import TIME_ATTR, CellASHA, TrialScheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
METRIC = "val/best_loss"


def scheduler() -> CellASHA:
    s = CellASHA(max_t=9, grace_period=1, reduction_factor=3)  # rungs at 1 and 3 epochs
    s.set_search_properties(METRIC, "min")
    return s


def trial(cell: str, name: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=name, config={"cell": cell})


def at_rung(s: CellASHA, t, loss: float, budget: int = 1) -> str:
    return s.on_trial_result(None, t, {TIME_ATTR: budget, METRIC: loss})


def test_each_cell_keeps_its_own_promotions():
    """A cell of bad losses (B0's are biased upwards) next to a cell of good ones: a global ASHA
    would stop every bad-cell trial at the first rung; per cell, its best ones go on."""
    s = scheduler()
    good = [trial("b1@0.00", f"g{i}") for i in range(3)]
    bad = [trial("b0@0.00", f"b{i}") for i in range(3)]
    for t in good + bad:
        s.on_trial_add(None, t)
    # The good cell: the first at a rung goes on, a worse one after it stops.
    assert [at_rung(s, t, loss) for t, loss in zip(good, [0.10, 0.20, 0.05], strict=True)] == [
        CONTINUE, STOP, CONTINUE]
    # The bad cell, every loss far above the good cell's: judged among its own.
    assert [at_rung(s, t, loss) for t, loss in zip(bad, [5.0, 6.0, 4.0], strict=True)] == [
        CONTINUE, STOP, CONTINUE]
    # The next rung, same story: b2 is the bad cell's best so far and is promoted.
    assert at_rung(s, bad[2], 3.0, budget=3) == CONTINUE
    assert at_rung(s, bad[0], 3.5, budget=3) == STOP
    assert at_rung(s, good[0], 0.04, budget=3) == CONTINUE
    assert "2 cells: 3 trials stopped early" in s.debug_string()


def test_a_restored_scheduler_decides_as_before(tmp_path):
    s = scheduler()
    a, b = trial("mt@0.40", "a"), trial("mt@0.40", "b")
    for t in (a, b):
        s.on_trial_add(None, t)
    assert at_rung(s, a, 0.5) == CONTINUE
    s.save(str(tmp_path / "asha.pkl"))
    restored = CellASHA(max_t=9, grace_period=1, reduction_factor=3)
    restored.restore(str(tmp_path / "asha.pkl"))
    # b is judged against a's recorded loss, which survived the restore.
    assert at_rung(restored, b, 0.9) == STOP
    # A trial the restored scheduler never saw added (driver restart) is taken in, not an error.
    c = trial("mt@0.40", "c")
    assert at_rung(restored, c, 0.1) == CONTINUE
    restored.on_trial_complete(None, c, {TIME_ATTR: 9, METRIC: 0.1})
