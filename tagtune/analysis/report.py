"""The report: one self-contained HTML page (figures embedded as base64 PNG, no other file
needed to read it), built from what :func:`tagtune.analysis.analyze` computed."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tagtune.analysis import stats
from tagtune.analysis.stats import method_name, metric_label, percent, statement
from tagtune.study.folder import read_rounds

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.warn{background:#fff4e0;border-left:4px solid
#f0a020;padding:.5em 1em}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
figcaption{font-size:.9em;color:#555}code{background:#f5f5f5;padding:0 .2em}"""

CAPTIONS = {
    "replicates": "Replicate results per cell (the paper's Fig. 4): box = quartiles over seeds, "
                  "dots = seeds.",
    "sensitivity": "Test metric vs. proportion of training labels removed (the paper's "
                   "Fig. 5): mean over replicates, band = ± 1 sd.",
    "hyperparameters": "Best gamma (LE), 1 − alpha and beta (MT), and the newer methods' own "
                       "settings, per proportion; grey dots are every trial that ran to the end.",
    "importance": "Hyperparameter importance per cell (Optuna PED-ANOVA on the selection loss).",
    "history": "Optimisation history: best validation loss so far per cell, by trial.",
}


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table(df: pd.DataFrame, index: bool = False, digits: int = 4) -> str:
    if df is None or df.empty:
        return "<p><em>(empty)</em></p>"
    return df.to_html(index=index, escape=True, border=0, na_rep="—",
                      float_format=lambda v: f"{v:.{digits}g}")


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>"


def _figure(name: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_esc(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(CAPTIONS.get(name, name))} (<code>{_esc(path.name)}</code>)"
            "</figcaption></figure>")


def _settings_table(settings) -> pd.DataFrame:
    keys = ("name", "data", "methods", "missing", "trials", "replicates", "epochs",
            "grace_period", "reduction_factor", "seed", "preset", "train")
    values = settings.as_dict()
    return pd.DataFrame({"setting": keys, "value": [str(values.get(k, "—")) for k in keys]})


def _comparisons(pairs: pd.DataFrame) -> pd.DataFrame:
    t = pairs.copy()
    t["method"] = t["method"].map(method_name)
    t["reference"] = t["reference"].map(method_name)
    t["proportion"] = t["proportion"].map(percent)
    # p-values as words where a bare number misleads: a comparison of fewer than MIN_VERDICT_PAIRS
    # seeds is not tested (a bootstrap of 2 pairs of one sign has p = 0), and p = 0 of a tested
    # one means below 1 / resamples.
    untested = t["n"] < stats.MIN_VERDICT_PAIRS
    t["p_boot"] = [f"not tested (n < {stats.MIN_VERDICT_PAIRS})" if u else p_text(p)
                   for u, p in zip(untested, t["p_boot"], strict=True)]
    for col in ("p_holm", "p_wilcoxon"):
        t[col] = [p_text(p) for p in t[col]]
    return t.rename(columns={"proportion": "removed", "diff": "mean diff", "p_boot": "bootstrap p",
                             "p_holm": "Holm p", "p_wilcoxon": "Wilcoxon p"})


def p_text(p: float) -> str:
    """A p-value for a table: ``—`` where there is none, ``< 0.001`` for the smallest."""
    return "—" if p is None or math.isnan(p) else stats.holm_text(p).removeprefix("= ")


def _best_table(best: pd.DataFrame) -> pd.DataFrame:
    """The best configs: the fixed columns, then those of the methods' own settings that some
    cell reads (a study of B0 and B1 alone shows none; method and proportion are in the cell id)."""
    fixed = ["cell", "selection_score", "trial_id", "lr"]
    own = [c for c in best.columns if c not in (*fixed, "method", "proportion") and best[c].notna().any()]
    return best[[c for c in fixed if c in best] + own]


def clear_rule(n: int) -> str:
    """What <b>clear</b> means, worded for the ``n`` comparisons that have a verdict."""
    seeds, alpha = stats.MIN_VERDICT_PAIRS, stats.ALPHA
    if n == 0:
        return (f"<b>clear</b> needs a comparison with at least {seeds} seeds and this report has "
                f"none, so no difference is called clear (bootstrap p-value below {alpha}, "
                f"Holm-corrected, once there are).")
    over = "uncorrected: it is the report's only comparison" if n == 1 else \
        f"Holm-corrected over the {n} comparisons of this report"
    return (f"<b>clear</b> = bootstrap p-value, {over} with at least {seeds} seeds, below "
            f"{alpha} (fewer seeds: no verdict).")


def build(r, dataset: dict[str, Any], best: pd.DataFrame, settings) -> str:
    """The report's HTML; ``r`` is the AnalysisResult (its figures already on disk)."""
    s = settings
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tagtune study "
             f"{_esc(s.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Study <code>{_esc(s.name)}</code>: what it found</h1>",
             f"<p>Study directory <code>{_esc(r.study_dir)}</code>. Headline metric: "
             f"<b>{_esc(metric_label(r.metric))}</b> (<code>{_esc(r.metric)}</code>), on the "
             f"replicates of each cell's best config (selected by <code>{_esc(s.objective)}</code>).</p>"]
    n = int(r.comparisons["p_holm"].notna().sum()) if not r.comparisons.empty else 0
    parts += ["<h2>The answer</h2>",
              _table(r.answer) if not r.answer.empty else
              "<p>No replicate has finished: there are no test results to compare yet.</p>",
              f"<p>Per proportion of training labels removed, the method with the best mean; its "
              f"margin over the baseline is the mean paired difference on the same seeds with a "
              f"percentile bootstrap 95% CI; {clear_rule(n)}</p>"]
    if r.gain:
        parts += ["<h2>Does the search pay?</h2><p>Per cell, the best config minus the paper's "
                  "point (each cell's first trial), retrained on the same seeds: mean paired "
                  "difference with a 95% t interval; 'gain' only where the interval is above 0.</p>",
                  _list(r.gain_lines)]
    if not r.side_by_side.empty:
        parts += [side_by_side_section(r.side_by_side)]
    if r.missing:
        parts.append("<div class='warn'><b>Incomplete study: analysed from what finished.</b>"
                     + _list(r.missing) + "</div>")
    if r.conclusions:
        parts += ["<h2>Differences (after Holm's correction)</h2>", _list(r.conclusions)]

    parts.append("<h2>Dataset</h2>")
    if dataset.get("table") is not None:
        parts.append(f"<p>{_esc(dataset['text'])}</p>" + _table(dataset["table"], digits=3))
    else:
        parts.append(f"<p>{_esc(dataset['text'])}</p>")
    parts += ["<h2>Study settings</h2>", _table(_settings_table(s))]
    if rounds := round_lines(r.study_dir):
        parts += ["<h2>Rounds</h2><p>The study was extended (<code>tagtune study extend</code>); "
                  "the analysis covers every round. What each round added or grew, and when:</p>",
                  _list(rounds)]

    parts += ["<h2>Completeness per cell</h2><p>Search trials by status against the "
              "per-cell budget (stopped early = cut by ASHA), and replicates found.</p>",
              _table(r.completeness.drop(columns=["unknown"]) if not
                     r.completeness["unknown"].any() else r.completeness)]

    parts.append(f"<h2>{_esc(metric_label(r.metric))}: mean ± sd over replicates</h2>")
    parts.append(_table(r.summary_wide, index=True) if not r.summary_wide.empty
                 else "<p><em>No replicate results.</em></p>")

    parts.append("<h2>Paired comparisons with the baselines</h2><p>Per proportion, each method "
                 "minus B1 (and minus B0) on the same seeds: mean difference, percentile "
                 "bootstrap 95% CI (scipy.stats.bootstrap, 10,000 resamples, seeded), the "
                 "bootstrap p-value and its Holm-adjusted value over every comparison here "
                 "(multiple testing), Wilcoxon signed-rank p-value from 5 pairs on. 'No clear "
                 f"difference' when the Holm-adjusted p is {stats.ALPHA} or more.</p>")
    if not r.comparisons.empty:
        parts.append(_list([statement(row, r.metric) for _, row in r.comparisons.iterrows()]))
        parts.append(_table(_comparisons(r.comparisons)))
    else:
        parts.append("<p><em>No pairs to compare.</em></p>")

    parts.append("<h2>Figures</h2>")
    parts += [_figure(name, path) for name, path in r.figures.items()]
    if r.skipped_figures:
        parts.append("<p>Not drawn:</p>" + _list([f"{k}: {v}" for k, v in
                                                  r.skipped_figures.items()]))

    parts += ["<h2>Best configs</h2>", _table(_best_table(best)),
              f"<p>Exported as runnable YAML in <code>{_esc(r.best_dir)}</code> "
              "(<code>tagtune train --config FILE --data DATA --out OUT --seed SEED</code>).</p>"]
    parts += ["<h2>Files</h2>", _list([f"results table: {p}" for p in r.table_files]
                                      + [f"tracking: {r.mlflow_note}"]), "</body></html>"]
    return "\n".join(parts)


def side_by_side_section(table: pd.DataFrame) -> str:
    """F1 at 0.5, F1 with tuned thresholds and mAP per method and proportion, and why all three."""
    split = next(c for c in table.columns if "/" in c).split("/")[0]
    where = {"test_full": "the test split against the complete truth",
             "test": "the observed labels of the test split"}[split]
    return ("<h2>F1 at 0.5, F1 with tuned thresholds and mAP</h2>"
            f"<p>Per method and proportion removed, over the replicates, on {_esc(where)} "
            f"(<code>{_esc(split)}/f1_macro</code>, <code>{_esc(split)}/f1_macro_tuned</code>, "
            f"<code>{_esc(split)}/auprc_macro</code>): mean ± sd. F1 at 0.5 counts a tag as present "
            "when its score is 0.5 or more, so it needs calibrated scores; F1 tuned uses per class the "
            "threshold that maximised that class's F1 on the observed validation labels; mAP (macro "
            "average precision) needs no threshold at all. A method can rank well yet calibrate "
            "badly: one that treats a missing label as a (weak) negative learns scores that are too "
            "low, so it can have the best mAP and F1 tuned and a poor F1 at 0.5. A large "
            "<i>tuned − @0.5</i> says the thresholds, not the ranking, cost that method its F1.</p>"
            + _table(stats.side_by_side_text(table)))


def round_lines(study_dir) -> list[str]:
    """One line per round of an extended study (rounds.json): when, what it added or grew."""
    out = []
    for r in read_rounds(study_dir):
        if r.get("ended"):  # a study extended before tagtune kept round 1's start: its end alone
            when = f"{r['started']} to {r['ended']}" if r.get("started") else f"ended {r['ended']}"
        else:
            when = f"started {r.get('started')}, not ended (resume it)"
        if r.get("round") == 1:
            what = f"{len(r.get('added_cells', []))} cells, {r.get('trials')} trials each, " \
                   f"{r.get('replicates')} replicates"
        else:
            parts = []
            if r.get("added_cells"):
                parts.append("added " + ", ".join(r["added_cells"]))
            if r.get("grown_cells"):
                parts.append("grown " + ", ".join(f"{c} (+{n} trials)" for c, n in r["grown_cells"].items()))
            if r.get("replicates") != r.get("previous_replicates"):
                parts.append(f"replicates {r.get('previous_replicates')} -> {r.get('replicates')}")
            if r.get("superseded"):
                parts.append(f"{len(r['superseded'])} earlier replicates superseded (new best config)")
            what = "; ".join(parts) or "nothing added"
        out.append(f"round {r.get('round')} ({when}): {what}")
    return out


def dataset_summary(data_path: str, fingerprint: str | None) -> dict[str, Any]:
    """The data file at a glance (split sizes, observed share); a note if it cannot be read."""
    from tagtune.study.data import DataError, load
    from tagtune.study.data.describe import split_table

    try:
        ds = load(data_path)
    except (DataError, OSError) as e:
        return {"table": None, "text": f"data file {data_path} not readable now ({e})."}
    text = f"{ds.name}: {len(ds.classes)} classes, file {data_path}."
    if fingerprint and ds.fingerprint != fingerprint:
        text += (f" Warning: the file changed since the study ran (fingerprint "
                 f"{ds.fingerprint}, study {fingerprint}).")
    table = split_table(ds)
    table["observed"] = table["observed"].map(lambda v: f"{100 * v:.1f}%")
    table["positive_rate"] = table["positive_rate"].map(
        lambda v: "—" if math.isnan(v) else f"{100 * v:.1f}%")
    return {"table": table, "text": text}


__all__ = ["build", "dataset_summary", "side_by_side_section"]
