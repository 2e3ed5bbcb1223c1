"""bench/objective_check.py and bench/rerank_check.py (issue 33): the comparison with the paper's point
on hand-made rows whose answer is known, and both checks runnable on a one-cell grid. What is
asserted is what the tables are made of, never how fast anything was."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from scipy.stats import binomtest

from tests.conftest import bench_module

cell_search = bench_module("cell_search")
objective_check = bench_module("objective_check")
BENCH = cell_search.__file__.rsplit("/", 1)[0]


def test_versus_counts_higher_lower_and_ties_and_tests_the_untied_cells():
    v = cell_search.versus([0.5, 0.6, 0.7, 0.4, 0.3], [0.4, 0.5, 0.7, 0.5, 0.1])
    assert (v["n"], v["higher"], v["lower"], v["tied"]) == (5, 3, 1, 1)
    assert v["p"] == pytest.approx(binomtest(3, 4).pvalue)  # the tie is left out of the test
    assert v["gain"] == pytest.approx((0.1 + 0.1 + 0 - 0.1 + 0.2) / 5)
    assert cell_search.versus_text(v) == f"3/5 (1 lower), p = {binomtest(3, 4).pvalue:.3f}"
    none = cell_search.versus([0.5], [0.5])
    assert math.isnan(none["p"]) and cell_search.versus_text(none) == "0/1 (0 lower), p = n/a"


def test_more_often_counts_only_the_cells_where_one_rule_beats_the_paper_and_the_other_not():
    m = cell_search.more_often([True, True, True, False, True], [True, False, False, False, False])
    assert (m["only_a"], m["only_b"]) == (3, 0) and m["p"] == pytest.approx(binomtest(3, 3).pvalue)
    assert math.isnan(cell_search.more_often([True], [True])["p"])


def _row(dataset, seed, paper, by_objective, same_rule=None):
    """A cell of objective_check: the paper's point at its val/loss epoch scores ``paper`` on every
    test figure, each objective's choice its own value (and its paper point ``same_rule``)."""
    row = {"dataset": dataset, "method": "b1", "missing": 0.4, "seed": seed,
           "paper_today": dict.fromkeys(cell_search.TESTED, paper)}
    for name, value in by_objective.items():
        row[name] = {"config": 1, **dict.fromkeys(cell_search.TESTED, value),
                     "paper_same_rule": dict.fromkeys(cell_search.TESTED, same_rule or paper)}
    return row


def test_objective_check_states_per_objective_how_often_the_choice_beats_the_paper_point():
    rows = [_row("openmic-like", s, 0.5, {"val/loss": 0.5 + d, "val/auprc_macro": 0.6,
                                          "val/f1_macro_tuned": 0.4})
            for s, d in enumerate((0.1, -0.1, 0.0, 0.1))]
    text = objective_check.versus_paper_table(rows)
    line = {tuple(c.strip() for c in r.split("|")[1:4]): [c.strip() for c in r.split("|")[4:-1]]
            for r in text.splitlines()[2:]}
    loss = line[("all", "val/loss", "val/loss")]
    assert loss[0] == f"2/4 (1 lower), p = {binomtest(2, 3).pvalue:.3f}" and loss[1] == "+0.025"
    assert line[("all", "val/auprc_macro", "val/loss")][4:6] == [
        f"4/4 (0 lower), p = {binomtest(4, 4).pvalue:.3f}", "+0.100"]  # the mAP columns
    assert line[("all", "val/f1_macro_tuned", "val/loss")][:2] == [
        f"0/4 (4 lower), p = {binomtest(0, 4).pvalue:.3f}", "-0.100"]
    # The paper point as a study with that objective replicates it: once per objective but val/loss.
    assert ("all", "val/loss", "the same objective") not in line
    assert ("openmic-like", "val/auprc_macro", "the same objective") in line
    # Against val/loss's own choice: auprc beats the paper in the 2 cells val/loss's choice did not.
    legacy = {tuple(c.strip() for c in r.split("|")[1:3]): [c.strip() for c in r.split("|")[3:-1]]
              for r in objective_check.versus_legacy_table(rows).splitlines()[2:]}
    auprc = legacy[("all", "val/auprc_macro")]
    assert auprc[6:9] == [f"2 / 0, p = {binomtest(2, 2).pvalue:.3f}",
                          f"2/4 (0 lower), p = {binomtest(2, 2).pvalue:.3f}", "+0.075"]  # mAP: 2 ties
    assert ("all", "val/loss") not in legacy


@pytest.mark.long
@pytest.mark.parametrize("bench, extra", [
    ("objective_check", []),
    ("rerank_check", ["--rerank", "2", "--rerank-seeds", "1", "--replicates", "1",
                      "--objectives", "val/loss,val/auprc_macro"]),
])
def test_a_one_cell_run_writes_its_rows_and_its_table_again_from_them(bench, extra, tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, f"{BENCH}/{bench}.py", "--datasets", "openmic-like", "--methods", "b1",
           "--missing", "0.4", "--seeds", "1", "--clips", "300", "--epochs", "2", "--configs", "2",
           "--out", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 1 and saved["args"]["epochs"] == 2
    assert "beats paper" in saved["table"] and saved["table"] in r.stdout
    again = subprocess.run([sys.executable, f"{BENCH}/{bench}.py", "--table-from", str(out)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == saved["table"].strip()
