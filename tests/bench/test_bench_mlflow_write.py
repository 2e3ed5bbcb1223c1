"""The bench of a study's MLflow writes stays runnable and says what it measured: ``--quick`` writes
the same journal events through MLflow's client calls and as one transaction a batch, each into a
fresh store, and both stores hold every trial and every epoch (the bench checks it before it
reports). What is asserted is what the figures are made of, never how fast anything was."""

from __future__ import annotations

import pytest

from tests.bench.conftest import quick_figures


def test_bench_mlflow_write_quick_writes_both_ways_and_reports_their_figures(tmp_path):
    fig, _ = quick_figures("bench_mlflow_write.py", tmp_path, timeout=300)
    # 8 trials two at a time: a start, 3 results and an end each.
    assert (fig["trials"], fig["epochs"], fig["events"]) == (8, 3, 8 * 5)
    assert [(run["arm"], run["runs"], run["epochs_held"]) for run in fig["runs"]] == [
        ("client", 8, 24), ("bulk", 8, 24)]
    for run in fig["runs"]:
        assert run["cpu_ms_a_trial"] == pytest.approx(1000 * run["cpu_s"] / 8)
    per = fig["median_ms_a_trial"]
    assert fig["ratio"] == pytest.approx(per["client"] / per["bulk"])
