"""The bench of Tune's own cost of a trial stays runnable and says what it measured: ``--quick``
runs the bare loop and both arms (a fit to a Tune trial, four to one) through plain Ray Tune,
checks that every fit reported, and writes its figures. What is asserted is what the figures are
made of, never how fast anything was."""

from __future__ import annotations

import math

import pytest

from tests.bench.conftest import quick_figures


@pytest.mark.long
def test_bench_tune_trial_quick_runs_both_arms_and_reports_their_figures(tmp_path):
    fig, _ = quick_figures("bench_tune_trial.py", tmp_path, timeout=600)
    assert (fig["fits"], fig["epochs"], fig["pack"]) == (8, 1, 4) and fig["bare_s"] > 0
    # The arms alternate, solo first; the packed arm runs the same fits in a quarter the trials.
    arms = [(run["arm"], run["trials"], run["reports"]) for run in fig["runs"]]
    assert arms == [("solo", 8, 8), ("pack4", 2, 8)]
    for run in fig["runs"]:
        assert run["errors"] == 0
        assert math.isclose(run["efficiency"], fig["bare_s"] / (2 * run["wall_s"]))
        c = run["cores"]
        assert c["process_s"] > run["wall_s"] and c["trials"] > 0 and c["driver"] > 0 and c["ray"] > 0
        assert c["stacks"] == 0  # no fused stacks here: the fits ran in the trial processes
        assert math.isclose(c["trials"] + c["driver"] + c["ray"] + c["idle"], c["cpus"] * c["process_s"])
        assert c["idle"] >= 0  # the processes' CPU seconds fit in their wall time
    solo, packed = (run["cores"] for run in fig["runs"])
    extra = solo["cpus"] * (solo["process_s"] - packed["process_s"])
    assert fig["per_trial_core_s"] == [pytest.approx(extra / 6)]  # 8 trials against 2
