"""Does the search pay? Per cell, the best config against the paper's point on the same seeds.

The paper's point is each cell's first search trial (the paper's settings, enqueued first in its
Optuna study). The study retrains it with the same seeds as the cell's best config (replicates
whose trial config says ``point: paper``); where the search's best IS the paper's point the gain
is 0 by construction and nothing is retrained. Per cell, the paired differences d = best - paper
over the seeds both have (replicate r of both uses seed + r, so the same label removal and the
same initial draws) give the mean gain with a two-sided 95% t interval
(``scipy.stats.ttest_1samp(d).confidence_interval``, i.e. the paired t test's): with the 3-5
seeds a study runs, a percentile bootstrap would claim certainty from two pairs of one sign;
the t interval does not.

A verdict per cell: ``gain`` (interval above 0), ``loss`` (below 0), ``no clear difference``,
``paper point kept`` (the search chose it), ``too few seeds`` (< 2 pairs). Used by the study's
summary.json (tagtune.launch), the report and ``tagtune analyze``'s answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95
PAPER = "paper"
"""A replicate trial config's ``point`` for the paper's point (the best config's has none)."""
HEADLINES = ("test_full/dcase_fine_macro_auprc", "test/dcase_fine_macro_auprc",
             "test_full/dcase_coarse_macro_auprc", "test/dcase_coarse_macro_auprc",
             "test_full/f1_macro", "test/f1_macro")
"""What summary.json's gain is stated on: the first found (the analysis' headline rule)."""


def paired_gain(best: dict[int, float], paper: dict[int, float] | None, higher_better: bool = True,
                level: float = LEVEL) -> dict[str, Any]:
    """The gain of one cell from its replicates' metric by seed; ``paper`` None: the search kept
    the paper's point (gain 0 by construction)."""
    if paper is None:
        return {"n": len(best), "gain": 0.0, "low": 0.0, "high": 0.0, "verdict": "paper point kept"}
    seeds = sorted(s for s in set(best) & set(paper)
                   if _finite(best[s]) and _finite(paper[s]))
    d = np.array([best[s] - paper[s] for s in seeds], dtype=float)
    if not higher_better:
        d = -d  # a gain is an improvement: lower loss
    out: dict[str, Any] = {"n": len(seeds), "gain": float(d.mean()) if len(d) else math.nan,
                           "low": math.nan, "high": math.nan}
    if len(d) < 2:
        return {**out, "verdict": "too few seeds"}
    if np.allclose(d, d[0]):  # no spread: the interval is the point (scipy would return nan)
        low = high = float(d[0])
    else:
        ci = stats.ttest_1samp(d, 0.0).confidence_interval(level)
        low, high = float(ci.low), float(ci.high)
    verdict = "gain" if low > 0 else "loss" if high < 0 else "no clear difference"
    return {**out, "low": low, "high": high, "verdict": verdict}


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def headline(rows: Iterable[dict[str, Any]]) -> str | None:
    """The first of HEADLINES that some row has a number for."""
    rows = list(rows)
    return next((m for m in HEADLINES if any(_finite(r.get(m)) for r in rows)), None)


def cell_gains(best_rows: list[dict[str, Any]], paper_rows: list[dict[str, Any]],
               kept: Iterable[str], metric: str) -> dict[str, dict[str, Any]]:
    """Per cell of ``best_rows`` (replicate rows: cell, seed, error, metrics), its gain on
    ``metric``; ``kept``: cells whose best config is the paper's point."""
    kept = set(kept)

    def by_cell(rows):
        out: dict[str, dict[int, float]] = {}
        for r in rows:
            if r.get("error") is None and _finite(r.get(metric)):
                out.setdefault(r["cell"], {})[int(r["seed"])] = float(r[metric])
        return out

    best, paper = by_cell(best_rows), by_cell(paper_rows)
    higher = not metric.endswith("loss")
    return {cell: paired_gain(b, None if cell in kept else paper.get(cell, {}), higher)
            for cell, b in sorted(best.items())}


def summary(best_rows: list[dict[str, Any]], paper_rows: list[dict[str, Any]],
            kept: Iterable[str]) -> dict[str, Any]:
    """summary.json's ``gain``: the metric and, per cell, n, gain, low, high, verdict."""
    metric = headline(best_rows)
    if metric is None:
        return {"metric": None, "level": LEVEL, "cells": {}}
    return {"metric": metric, "level": LEVEL, "cells": cell_gains(best_rows, paper_rows, kept, metric)}


def fmt(g: dict[str, Any], digits: int = 3) -> str:
    """``+0.021 [+0.005, +0.037] gain`` (``paper point kept``; ``n/a`` without pairs)."""
    if g["verdict"] == "paper point kept":
        return "0 (paper point kept)"
    if not _finite(g["gain"]):
        return "n/a (no pairs)"
    ci = "" if not _finite(g["low"]) else f" [{g['low']:+.{digits}f}, {g['high']:+.{digits}f}]"
    return f"{g['gain']:+.{digits}f}{ci} {g['verdict']}"


def proportion_lines(gains: dict[str, dict[str, Any]], method_name=str) -> list[str]:
    """One line per proportion: where the search beat the paper's point, and plainly where not."""
    by_p: dict[str, list[tuple[str, dict]]] = {}
    for cell, g in gains.items():
        method, _, p = cell.partition("@")
        by_p.setdefault(p, []).append((method, g))
    lines = []
    for p, items in sorted(by_p.items(), key=lambda kv: float(kv[0])):
        won = [m for m, g in items if g["verdict"] == "gain"]
        parts = ", ".join(f"{method_name(m)} {fmt(g)}" for m, g in items)
        lead = (f"search beat the paper's point in {len(won)} of {len(items)} cells"
                if won else "search did NOT beat the paper's point in any cell")
        lines.append(f"{100 * float(p):.0f}% removed: {lead} -- best - paper, 95% CI: {parts}")
    return lines


__all__ = ["HEADLINES", "LEVEL", "PAPER", "cell_gains", "fmt", "headline", "paired_gain",
           "proportion_lines", "summary"]
