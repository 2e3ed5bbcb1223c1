"""The gain over the paper's point: paired differences and their 95% t interval, on made-up replicates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tagtune.analysis import gain


def _rows(cell, values, seed0=0, metric="test_full/f1_macro"):
    return [{"cell": cell, "seed": seed0 + i, "error": None, metric: v} for i, v in enumerate(values)]


def test_a_clear_gain_a_clear_loss_and_no_clear_difference():
    best = _rows("b1@0.00", [0.70, 0.72, 0.71, 0.73]) + _rows("mt@0.00", [0.60, 0.61, 0.59, 0.60]) \
        + _rows("le@0.00", [0.65, 0.60, 0.70, 0.62])
    paper = _rows("b1@0.00", [0.65, 0.66, 0.66, 0.67]) + _rows("mt@0.00", [0.66, 0.65, 0.66, 0.67]) \
        + _rows("le@0.00", [0.66, 0.63, 0.64, 0.66])
    g = gain.cell_gains(best, paper, kept=[], metric="test_full/f1_macro")
    d = np.array([0.70, 0.72, 0.71, 0.73]) - np.array([0.65, 0.66, 0.66, 0.67])
    ci = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert g["b1@0.00"]["gain"] == pytest.approx(d.mean())
    assert (g["b1@0.00"]["low"], g["b1@0.00"]["high"]) == pytest.approx(ci)
    assert [g[c]["verdict"] for c in ("b1@0.00", "mt@0.00", "le@0.00")] == [
        "gain", "loss", "no clear difference"]
    assert all(g[c]["n"] == 4 for c in g)


def test_pairs_by_seed_only_where_both_have_it():
    best = _rows("b1@0.40", [0.8, 0.7, 0.9])  # seeds 0 1 2
    paper = _rows("b1@0.40", [0.5, 0.4], seed0=1)  # seeds 1 2
    (g,) = gain.cell_gains(best, paper, kept=[], metric="test_full/f1_macro").values()
    assert g["n"] == 2 and g["gain"] == pytest.approx(((0.7 - 0.5) + (0.9 - 0.4)) / 2)


def test_kept_paper_point_too_few_seeds_and_lower_is_better():
    best = _rows("b0@0.00", [0.5, 0.6]) + _rows("b1@0.00", [0.5])
    g = gain.cell_gains(best, _rows("b1@0.00", [0.4]), kept=["b0@0.00"], metric="test_full/f1_macro")
    assert g["b0@0.00"]["verdict"] == "paper point kept" and g["b0@0.00"]["gain"] == 0
    assert g["b1@0.00"]["verdict"] == "too few seeds" and math.isnan(g["b1@0.00"]["low"])
    loss = gain.cell_gains(_rows("b1@0.00", [0.3, 0.31], metric="test/loss"),
                           _rows("b1@0.00", [0.5, 0.52], metric="test/loss"), [], "test/loss")
    assert loss["b1@0.00"]["gain"] == pytest.approx(0.205) and loss["b1@0.00"]["verdict"] == "gain"


def test_summary_picks_the_headline_and_lines_say_where_the_search_did_not_pay():
    best = _rows("b1@0.00", [0.70, 0.72, 0.71]) + _rows("mt@0.00", [0.60, 0.61, 0.59])
    paper = _rows("b1@0.00", [0.65, 0.66, 0.66]) + _rows("mt@0.00", [0.66, 0.65, 0.66])
    s = gain.summary(best, paper, kept=[])
    assert s["metric"] == "test_full/f1_macro" and set(s["cells"]) == {"b1@0.00", "mt@0.00"}
    (line,) = gain.proportion_lines(s["cells"])
    assert line.startswith("0% removed: search beat the paper's point in 1 of 2 cells")
    assert "mt " in line and "loss" in line
    (none,) = gain.proportion_lines({"mt@0.40": s["cells"]["mt@0.00"]})
    assert "did NOT beat the paper's point" in none
