"""Statistics over the replicates: mean ± sd per (method, proportion), paired comparisons.

A comparison pairs two methods' replicates of the same proportion by seed (replicate r of
every cell uses the same seed, so the same label removal), takes the per-seed differences
d = method - reference, and reports their mean with a percentile bootstrap 95% confidence
interval (seeded, so a report is reproducible) and, from 5 pairs on, a Wilcoxon
signed-rank p-value (fewer pairs cannot reach p < 0.05 two-sided). The verdict is read off
the interval: it covers 0 -> "no clear difference".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

REFERENCES = ("b1", "b0")  # the paper's baselines: masked loss, missing = negative
MIN_WILCOXON_PAIRS = 5
_NAMES = {"f1_macro": "F1 macro", "auprc_macro": "AUPRC macro", "auprc_micro": "AUPRC micro",
          "map": "mAP", "loss": "loss (BCE)"} | {
    f"dcase_{level}_{m}": f"DCASE {level} {label}" for level in ("fine", "coarse")
    for m, label in (("micro_auprc", "micro AUPRC"), ("macro_auprc", "macro AUPRC"),
                     ("micro_f1", "micro F1"))}


def metric_name(metric: str) -> str:
    """``test_full/f1_macro`` -> ``F1 macro``: the words used in sentences."""
    base = metric.split("/", 1)[-1]
    return _NAMES.get(base, base)


def metric_label(metric: str) -> str:
    """Axis/table label: the name, the split and, for ``*_full``, the truth it is scored on."""
    split, _, _ = metric.partition("/")
    where = {"test_full": "test, full truth", "test": "test, observed labels",
             "val_full": "validation, full truth", "val": "validation"}.get(split, split)
    return f"{metric_name(metric)} ({where})"


def higher_is_better(metric: str) -> bool:
    return not metric.endswith("loss")


def method_name(method: str) -> str:
    return method.upper()


def percent(p: float) -> str:
    return f"{100 * p:.0f}%"


def summary_table(reps: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (method, proportion): n, mean and sd (ddof 1; NaN with one replicate)."""
    g = reps.dropna(subset=[metric]).groupby(["method", "proportion"])[metric]
    out = g.agg(n="count", mean="mean", sd="std").reset_index()
    return out.sort_values(["method", "proportion"]).reset_index(drop=True)


def wide_summary(summary: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Method x proportion table of ``mean ± sd (n)`` strings, for the report."""
    def cell(r) -> str:
        sd = "n/a" if math.isnan(r["sd"]) else f"{r['sd']:.{digits}f}"
        return f"{r['mean']:.{digits}f} ± {sd} (n={int(r['n'])})"

    if summary.empty:
        return pd.DataFrame()
    s = summary.assign(text=summary.apply(cell, axis=1),
                       missing=summary["proportion"].map(lambda p: f"{percent(p)} missing"))
    wide = s.pivot(index="method", columns="missing", values="text")
    order = sorted(s["missing"].unique(), key=lambda c: float(c.split("%")[0]))
    wide = wide[order].fillna("—")
    wide.index = pd.Index([method_name(m) for m in wide.index], name="method")
    wide.columns.name = None
    return wide


def bootstrap_ci(d: np.ndarray, n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (resampling the pairs)."""
    d = np.asarray(d, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (NaN below 5 pairs or when every d is 0)."""
    d = np.asarray(d, dtype=float)
    if len(d) < MIN_WILCOXON_PAIRS or np.all(d == 0):
        return math.nan
    return float(stats.wilcoxon(d).pvalue)


def paired_comparisons(reps: pd.DataFrame, metric: str, references=REFERENCES,
                       n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Every other method against each reference, per proportion, paired on seed."""
    cols = ["method", "reference", "proportion", "n", "diff", "ci_low", "ci_high", "p_wilcoxon",
            "verdict"]
    if metric not in reps:  # no replicate reported it (none finished yet)
        return pd.DataFrame(columns=cols)
    up = higher_is_better(metric)
    data = reps.dropna(subset=[metric])
    rows = []
    for k, ref in enumerate(references):
        for (method, p), group in data.groupby(["method", "proportion"]):
            if method == ref or method in references[:k]:  # B1 vs B0 once, not B0 vs B1 again
                continue
            base = data[(data["method"] == ref) & (data["proportion"] == p)]
            pairs = group[["seed", metric]].merge(base[["seed", metric]], on="seed",
                                                  suffixes=("", "_ref")).sort_values("seed")
            if pairs.empty:
                continue
            d = (pairs[metric] - pairs[f"{metric}_ref"]).to_numpy()
            lo, hi = bootstrap_ci(d, n_boot, seed=seed) if len(d) >= 2 else (math.nan, math.nan)
            if len(d) < 2:
                verdict = "too few pairs"
            elif lo <= 0 <= hi:
                verdict = "no clear difference"
            else:
                verdict = "better" if (lo > 0) == up else "worse"
            rows.append({"method": method, "reference": ref, "proportion": p, "n": len(d),
                         "diff": float(d.mean()), "ci_low": lo, "ci_high": hi,
                         "p_wilcoxon": wilcoxon_p(d), "verdict": verdict})
    return pd.DataFrame(rows, columns=cols)


def statement(row: pd.Series | dict, metric: str, digits: int = 3) -> str:
    """One comparison in words, e.g. ``MT beats B1 at 40% missing: +0.031 F1 macro, ...``."""
    a, b = method_name(row["method"]), method_name(row["reference"])
    where = f"at {percent(row['proportion'])} missing"
    diff = f"{row['diff']:+.{digits}f} {metric_name(metric)}"
    seeds = f"{row['n']} seed{'s' if row['n'] != 1 else ''}"
    if row["n"] < MIN_WILCOXON_PAIRS:
        seeds = f"only {seeds}"
    if row["verdict"] == "too few pairs":
        return f"{a} vs {b} {where}: {diff} on {seeds}; too few pairs for an interval."
    ci = f"95% CI [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]"
    test = (f"Wilcoxon p = {row['p_wilcoxon']:.2g}" if not math.isnan(row["p_wilcoxon"])
            else "a rough interval, too few for a Wilcoxon test" if row["n"] < MIN_WILCOXON_PAIRS
            else "Wilcoxon test undefined: every difference is 0")
    if row["verdict"] == "no clear difference":
        return f"{a} vs {b} {where}: no clear difference ({diff}, {ci}; {seeds}, {test})."
    verb = "beats" if row["verdict"] == "better" else "loses to"
    return f"{a} {verb} {b} {where}: {diff}, {ci} ({seeds}, {test})."


def best_per_proportion(summary: pd.DataFrame, metric: str, digits: int = 3) -> list[str]:
    """Per proportion, which method has the best mean, in words."""
    out = []
    pick = "idxmax" if higher_is_better(metric) else "idxmin"
    for p, g in summary.groupby("proportion"):
        r = g.loc[getattr(g["mean"], pick)()]
        sd = "" if math.isnan(r["sd"]) else f" ± {r['sd']:.{digits}f}"
        out.append(f"At {percent(p)} missing, {method_name(r['method'])} has the best mean "
                   f"{metric_name(metric)}: {r['mean']:.{digits}f}{sd} over {int(r['n'])} seeds"
                   f" (of {len(g)} methods).")
    return out


def conclusions(summary: pd.DataFrame, pairs: pd.DataFrame, metric: str) -> list[str]:
    """The report's headline: the best method per proportion, then every comparison whose
    interval excludes 0, then how many showed no clear difference."""
    lines = best_per_proportion(summary, metric)
    clear = pairs[pairs["verdict"].isin(["better", "worse"])]
    lines += [statement(r, metric) for _, r in clear.iterrows()]
    rest = len(pairs) - len(clear)
    if rest:
        lines.append(f"The other {rest} comparison{'s' if rest != 1 else ''} with the baselines "
                     "show no clear difference (the 95% CI covers 0) or have too few seeds.")
    return lines


__all__ = ["REFERENCES", "best_per_proportion", "bootstrap_ci", "conclusions",
           "higher_is_better", "metric_label", "metric_name", "paired_comparisons", "percent",
           "statement", "summary_table", "wide_summary", "wilcoxon_p"]
