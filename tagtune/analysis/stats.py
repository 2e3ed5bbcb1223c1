"""Statistics over the replicates: mean ± sd per (method, proportion), paired comparisons.

A comparison pairs two methods' replicates of the same proportion by seed (replicate r of
every cell uses the same seed, so the same label removal), takes the per-seed differences
d = method - reference, and reports their mean with a percentile bootstrap 95% confidence
interval (scipy.stats.bootstrap, seeded, so a report is reproducible), the bootstrap's
two-sided p-value for "mean 0" (the interval of level 1 - p just touches 0) and, from 5 pairs
on, a Wilcoxon signed-rank p-value (fewer pairs cannot reach p < 0.05 two-sided).

Every comparison of a report is one family: the bootstrap p-values are Holm-corrected over
all of them, and the verdict reads the corrected one: below 0.05 -> "better"/"worse", else
"no clear difference". Uncorrected, that verdict is the interval's (does it cover 0?). A
comparison of fewer than 5 seeds gets no verdict ("too few seeds") and stays out of the
family: a percentile bootstrap of 2 pairs of one sign has p = 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

REFERENCES = ("b1", "b0")  # the paper's baselines: masked loss, missing = negative
MIN_WILCOXON_PAIRS = 5
MIN_VERDICT_PAIRS = 5  # seeds a comparison needs for a verdict (the paper ran 5 replicates)
ALPHA = 0.05  # family-wise error rate of a report's comparisons (Holm)
_NAMES = {"f1_macro": "F1 macro", "f1_macro_tuned": "F1 macro (tuned thresholds)",
          "auprc_macro": "AUPRC macro", "auprc_micro": "AUPRC micro",
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
    """How figures and tables name a method: its declared LABEL (B0, LE+MT, LL-R, Hill, ...); a
    method the registry does not know (an older study's) in capitals."""
    from tagtune.study.methods.registry import METHODS, label

    return label(method) if method in METHODS else method.upper()


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


# Issue 33: F1 at 0.5 needs calibrated scores, F1 with validation-tuned thresholds and mAP do not;
# shown side by side, a method that ranks well but calibrates badly is visible as such.
SIDE_BY_SIDE = {"f1_macro": "F1 @0.5", "f1_macro_tuned": "F1 tuned", "auprc_macro": "mAP"}
"""The three figures of :func:`side_by_side`, by metric name (``auprc_macro`` is the mean per-class
average precision, mAP; over the complete truth it equals ``test_full/map``), and their labels."""


def side_by_side_split(reps: pd.DataFrame) -> str:
    """``test_full`` where the replicates were scored against the complete truth, else ``test``."""
    full = "test_full/f1_macro"
    return "test_full" if full in reps and reps[full].notna().any() else "test"


def side_by_side(reps: pd.DataFrame) -> pd.DataFrame:
    """Per (method, proportion): n (replicates) and the mean and sd (ddof 1) of F1 macro at 0.5,
    F1 macro with tuned thresholds and mAP on :func:`side_by_side_split`'s split; a figure the
    replicates do not have (a study from before tagtune reported it) is NaN."""
    split = side_by_side_split(reps)
    names = [f"{split}/{m}" for m in SIDE_BY_SIDE]
    cols = ["method", "proportion", "n", *(c for n in names for c in (n, f"{n}_sd"))]
    if reps.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (method, p), g in reps.groupby(["method", "proportion"]):
        row: dict = {"method": method, "proportion": p, "n": len(g)}
        for n in names:
            v = g[n].dropna() if n in g else pd.Series(dtype=float)
            row[n] = float(v.mean()) if len(v) else math.nan
            row[f"{n}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=cols).sort_values(["proportion", "method"]).reset_index(drop=True)


def side_by_side_text(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """:func:`side_by_side` for the report: the method's label, the proportion removed, n, each
    figure as ``mean ± sd`` (``—`` where missing), and F1 tuned minus F1 at 0.5 (how much of the
    method's F1 its thresholds, not its ranking, cost)."""
    names = [c for c in table.columns if c.split("/")[-1] in SIDE_BY_SIDE]
    cols = ["method", "removed", "n", *SIDE_BY_SIDE.values(), "tuned − @0.5"]
    if table.empty:
        return pd.DataFrame(columns=cols)

    def text(mean: float, sd: float) -> str:
        if math.isnan(mean):
            return "—"
        return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")

    out = pd.DataFrame({"method": table["method"].map(method_name),
                        "removed": table["proportion"].map(percent), "n": table["n"]})
    for n in names:
        out[SIDE_BY_SIDE[n.split("/")[-1]]] = [text(m, s) for m, s in zip(table[n], table[f"{n}_sd"],
                                                                           strict=True)]
    f1, tuned = (next(n for n in names if n.endswith(f"/{k}")) for k in ("f1_macro", "f1_macro_tuned"))
    gap = table[tuned] - table[f1]
    out["tuned − @0.5"] = ["—" if math.isnan(g) else f"{g:+.{digits}f}" for g in gap]
    return out[cols]


def bootstrap(d: np.ndarray, n_boot: int = 10_000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap of the mean of ``d`` (resampling the pairs): the interval's ends and
    the two-sided p-value of "mean 0", 2 x the share of resampled means beyond 0 (at most 1)."""
    d = np.asarray(d, dtype=float)
    if np.all(d == d[0]):  # every resample is the same mean; scipy warns on such data
        return float(d[0]), float(d[0]), 1.0 if d[0] == 0 else 0.0
    res = stats.bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=level,
                          method="percentile", rng=np.random.default_rng(seed))
    means = res.bootstrap_distribution
    p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(res.confidence_interval.low), float(res.confidence_interval.high), p


def holm(p: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjustment of the p-values ``p`` (NaN stays NaN, outside the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    order = known[np.argsort(p[known], kind="stable")]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (NaN below 5 pairs or when every d is 0)."""
    d = np.asarray(d, dtype=float)
    if len(d) < MIN_WILCOXON_PAIRS or np.all(d == 0):
        return math.nan
    return float(stats.wilcoxon(d).pvalue)


def paired_comparisons(reps: pd.DataFrame, metric: str, references=REFERENCES,
                       n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Every other method against each reference, per proportion, paired on seed; the
    verdicts Holm-corrected over all of them (see the module docstring)."""
    cols = ["method", "reference", "proportion", "n", "diff", "ci_low", "ci_high", "p_boot",
            "p_holm", "p_wilcoxon", "verdict"]
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
            lo, hi, p_boot = bootstrap(d, n_boot, seed=seed) if len(d) >= 2 else (math.nan,) * 3
            rows.append({"method": method, "reference": ref, "proportion": p, "n": len(d),
                         "diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_boot": p_boot,
                         "p_wilcoxon": wilcoxon_p(d)})
    out = pd.DataFrame(rows, columns=cols)
    # Below MIN_VERDICT_PAIRS no verdict, so no test in the family: with 2 pairs of one sign
    # every bootstrap resample has that sign (p = 0), which says nothing.
    tested = out["p_boot"].where(out["n"] >= MIN_VERDICT_PAIRS)
    out["p_holm"] = holm(tested.to_numpy()) if len(out) else []
    out["verdict"] = [
        "too few pairs" if r.n < 2 else "too few seeds" if r.n < MIN_VERDICT_PAIRS
        else "no clear difference" if not r.p_holm < ALPHA
        else "better" if (r.diff > 0) == up else "worse" for r in out.itertuples()]
    return out


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
    if row["verdict"] == "too few seeds":
        return (f"{a} vs {b} {where}: {diff}, {ci} on {seeds}: too few for a verdict "
                f"({MIN_VERDICT_PAIRS} needed).")
    test = (f"Wilcoxon p = {row['p_wilcoxon']:.2g}" if not math.isnan(row["p_wilcoxon"])
            else "a rough interval, too few for a Wilcoxon test" if row["n"] < MIN_WILCOXON_PAIRS
            else "Wilcoxon test undefined: every difference is 0")
    test = f"Holm-adjusted p {holm_text(row['p_holm'])}, {test}"
    if row["verdict"] == "no clear difference":
        return f"{a} vs {b} {where}: no clear difference ({diff}, {ci}; {seeds}, {test})."
    verb = "beats" if row["verdict"] == "better" else "loses to"
    return f"{a} {verb} {b} {where}: {diff}, {ci} ({seeds}, {test})."


def holm_text(p: float) -> str:
    """``< 0.001`` or ``= 0.042``: a bootstrap p-value of 0 means below 1 / resamples."""
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def answer_table(summary: pd.DataFrame, pairs: pd.DataFrame, metric: str,
                 digits: int = 3) -> pd.DataFrame:
    """The answer, one row per proportion: the method with the best mean, that mean, its margin
    over B1 (B0 if the study has no B1) with the 95% interval, and whether it is clear (Holm)."""
    present = set(summary["method"])
    ref = next((r for r in REFERENCES if r in present), None)
    margin = f"margin over {method_name(ref)} [95% CI]" if ref else "margin [95% CI]"
    pick = "idxmax" if higher_is_better(metric) else "idxmin"
    rows = []
    for p, g in summary.groupby("proportion"):
        best = g.loc[getattr(g["mean"], pick)()]
        sd = "n/a" if math.isnan(best["sd"]) else f"{best['sd']:.{digits}f}"
        row = {"removed": percent(p), "best": method_name(best["method"]),
               "mean ± sd (n)": f"{best['mean']:.{digits}f} ± {sd} (n={int(best['n'])})",
               margin: "—", "clear": "—"}
        hit = pairs[(pairs["method"] == best["method"]) & (pairs["reference"] == ref)
                    & (pairs["proportion"] == p)]
        if best["method"] == ref:
            row[margin] = f"{method_name(ref)} itself is best"
        elif len(hit) and hit.iloc[0]["verdict"] == "too few pairs":
            row[margin], row["clear"] = f"{hit.iloc[0]['diff']:+.{digits}f}", "too few seeds"
        elif len(hit):
            h = hit.iloc[0]
            row[margin] = (f"{h['diff']:+.{digits}f} [{h['ci_low']:+.{digits}f}, "
                           f"{h['ci_high']:+.{digits}f}]")
            yes = h["verdict"] in ("better", "worse")
            row["clear"] = (f"too few seeds ({h['n']} of {MIN_VERDICT_PAIRS})"
                            if h["verdict"] == "too few seeds"
                            else f"{'yes' if yes else 'no'} (Holm p {holm_text(h['p_holm'])})")
        rows.append(row)
    return pd.DataFrame(rows, columns=["removed", "best", "mean ± sd (n)", margin, "clear"])


def conclusions(summary: pd.DataFrame, pairs: pd.DataFrame, metric: str) -> list[str]:
    """What follows the answer table: every comparison that is clear after Holm's correction,
    then how many are not."""
    clear = pairs[pairs["verdict"].isin(["better", "worse"])]
    lines = [statement(r, metric) for _, r in clear.iterrows()]
    rest, tested = len(pairs) - len(clear), int(pairs["p_holm"].notna().sum())
    if rest and not tested:
        lines.append(f"No comparison with the baselines has the {MIN_VERDICT_PAIRS} seeds a verdict "
                     f"needs ({rest} with fewer): their intervals are in the report\'s paired comparisons.")
    elif rest:
        lines.append(f"The other {rest} comparison{'s' if rest != 1 else ''} with the baselines "
                     f"show no clear difference (Holm-adjusted p >= {ALPHA} over the "
                     f"{tested} tested) or have too few seeds "
                     f"(below {MIN_VERDICT_PAIRS}).")
    return lines


__all__ = ["ALPHA", "REFERENCES", "answer_table", "bootstrap", "conclusions", "higher_is_better",
           "holm", "holm_text", "metric_label", "metric_name", "paired_comparisons", "percent",
           "side_by_side", "side_by_side_split", "side_by_side_text", "statement", "summary_table",
           "wide_summary", "wilcoxon_p"]
