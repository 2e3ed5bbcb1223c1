"""The study's figures, as PNG files (matplotlib, Agg: no display needed).

Each function draws one figure from the tidy table (or a table derived from it), writes
it to ``path`` and returns the path; :func:`make_figures` draws every figure the data
allows and says, for the others, why not.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tagtune.analysis.stats import method_name, metric_label, percent  # noqa: E402
from tagtune.study.atomic import atomic_path  # noqa: E402
from tagtune.study.methods.registry import METHODS, searched  # noqa: E402

# One colour per method, in METHODS' order (also the figures' order): the paper's four first.
PALETTE = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
COLORS = dict(zip(METHODS, PALETTE, strict=False))
assert len(COLORS) == len(METHODS), "a new method needs a colour: add one to PALETTE"
MISSING_AXIS = "training labels removed (%)"
SELECTION_AXIS = "best validation loss so far (BCE)"
DPI = 110
PARAM_NAMES = {"one_minus_alpha": "1 − alpha", "lr": "learning rate"}


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:  # a figure is whole or absent, never half a PNG
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _legend_below(fig, handles, labels) -> None:
    """One legend for every panel, under them: in a panel it would hide data points."""
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=len(labels), frameon=False, fontsize=9)


def _methods(df: pd.DataFrame) -> list[str]:
    order = list(COLORS)
    return sorted(df["method"].unique(), key=lambda m: order.index(m) if m in order else 99)


def replicate_boxes(reps: pd.DataFrame, metric: str, path: Path) -> Path:
    """The paper's Fig. 4: per proportion, one box per method over its replicates (dots: the
    seeds)."""
    props = sorted(reps["proportion"].unique())
    methods = _methods(reps)
    fig, axes = plt.subplots(1, len(props), figsize=(1.2 + 2.6 * len(props), 3.6), sharey=True,
                             squeeze=False)
    for ax, p in zip(axes[0], props, strict=True):
        data = [reps[(reps["proportion"] == p) & (reps["method"] == m)][metric].dropna().to_numpy()
                for m in methods]
        keep = [i for i, d in enumerate(data) if len(d)]
        box = ax.boxplot([data[i] for i in keep], positions=keep, widths=0.6, patch_artist=True,
                         medianprops={"color": "black"}, showfliers=False)
        for patch, i in zip(box["boxes"], keep, strict=True):
            patch.set(facecolor=COLORS.get(methods[i], "white"), alpha=0.45)
        rng = np.random.default_rng(0)  # jitter only: the dots' x offsets
        for i in keep:
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(data[i])), data[i], s=14, zorder=3,
                       color=COLORS.get(methods[i], "black"), edgecolor="black", linewidth=0.4)
        ax.set_xticks(range(len(methods)), [method_name(m) for m in methods])
        ax.set_title(f"{percent(p)} of labels removed", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(metric_label(metric))
    n = reps.groupby("cell")[metric].count()
    seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()}–{n.max()}"
    fig.suptitle(f"Replicates of each cell's best config ({seeds} seeds per box)", fontsize=11)
    return _save(fig, path)


def sensitivity(summary: pd.DataFrame, metric: str, path: Path) -> Path:
    """The paper's Fig. 5: mean test metric vs proportion removed, one line per method,
    the band is ± 1 sd over the replicates."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for m in _methods(summary):
        s = summary[summary["method"] == m].sort_values("proportion")
        x, y, sd = 100 * s["proportion"], s["mean"], s["sd"].fillna(0)
        ax.plot(x, y, marker="o", color=COLORS.get(m), label=method_name(m))
        ax.fill_between(x, y - sd, y + sd, color=COLORS.get(m), alpha=0.15, linewidth=0)
    ax.set_xlabel(MISSING_AXIS)
    ax.set_ylabel(metric_label(metric))
    ax.set_xticks(sorted(100 * summary["proportion"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(title="method (mean ± 1 sd)", fontsize=9, title_fontsize=9, frameon=False,
              loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Sensitivity to the missing-label proportion", fontsize=11)
    return _save(fig, path)


def _panels(methods: tuple[str, ...]) -> list[tuple[str, str, str, bool, tuple | None]]:
    """(method, table column, axis label, log scale, fixed y range) of each parameter the methods'
    modules declare searched: a bounded linear one (a percentile) is drawn over its whole range,
    so one best value does not fill the axis."""
    panels = []
    for m in methods:
        for p in searched(m):
            b, s = p.search_bounds, p.search
            whole = b.low is not None and b.high is not None and not s.log
            panels.append((m, p.search_name, f"{method_name(m)} {s.label or p.search_name}", s.log,
                           (b.low, b.high) if whole else None))
    return panels


# Each panel of best_hparams: the paper's four methods' (METHODS begins with them), then the others'.
HPARAM_PANELS = _panels(METHODS[:4])
HPARAM_PANELS_BEYOND = _panels(METHODS[4:])
# Searched as 1 - the field (MT's one_minus_alpha): the table has the field, the panel the search.
_COMPLEMENTS = {p.search_name: p.name for m in METHODS for p in searched(m) if p.search.complement}


def best_hparams(search: pd.DataFrame, best: pd.DataFrame, path: Path) -> Path | None:
    """Each searched method's own settings (LE gamma, MT alpha and beta, LL-R delta_rel, ...):
    the best per proportion (line) over every trial that ran to the end (grey dots). None if the
    study has no method with a panel (B0, B1, WAN and EPR alone)."""
    panels = [p for p in HPARAM_PANELS + HPARAM_PANELS_BEYOND if p[0] in set(best["method"])
              and (p[1] in best.columns or p[1] in _COMPLEMENTS)]
    if not panels:
        return None
    search = search.assign(**{k: 1 - search[field] for k, field in _COMPLEMENTS.items()})
    best = best.assign(**{k: 1 - best[field] for k, field in _COMPLEMENTS.items()})
    fig, axes = plt.subplots(1, len(panels), figsize=(0.6 + 3.4 * len(panels), 3.4), squeeze=False)
    for ax, (method, col, label, log, ylim) in zip(axes[0], panels, strict=True):
        trials = search[(search["method"] == method) & (search["status"] == "complete")]
        ax.scatter(100 * trials["proportion"], trials[col], color="0.6", s=16)
        b = best[best["method"] == method].sort_values("proportion")
        ax.plot(100 * b["proportion"], b[col], marker="D", color=COLORS[method])
        ax.set_xlabel(MISSING_AXIS)
        ax.set_ylabel(label)
        ax.set_xticks(sorted(100 * search["proportion"].unique()))
        if log:
            ax.set_yscale("log")
        if ylim:  # a percentile: its whole range, so one best value does not fill the axis
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    fig.suptitle("Best hyperparameters found vs. missing-label proportion", fontsize=11)
    fig.tight_layout()
    _legend_below(fig, [plt.Line2D([], [], color="0.6", marker="o", linestyle=""),
                        plt.Line2D([], [], color="black", marker="D")],
                  ["a trial run to the end", "the cell's best (selected by validation loss)"])
    return _save(fig, path)


def importance(imp: pd.DataFrame, path: Path) -> Path:
    """PED-ANOVA importance per parameter, one panel per method, one bar per proportion."""
    methods = _methods(imp)
    props = sorted(imp["proportion"].unique())
    shades = plt.get_cmap("viridis")(np.linspace(0.15, 0.85, len(props)))
    fig, axes = plt.subplots(1, len(methods), figsize=(0.8 + 3.6 * len(methods), 3.2),
                             squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        t = imp[imp["method"] == m].pivot(index="param", columns="proportion", values="importance")
        t = t.reindex(columns=props)  # the same bar slot and colour per proportion in every panel
        y = np.arange(len(t.index))
        h = 0.8 / len(t.columns)
        for j, p in enumerate(t.columns):
            ax.barh(y + (j - (len(t.columns) - 1) / 2) * h, t[p].fillna(0), height=h,
                    color=shades[j])
        ax.set_yticks(y, [PARAM_NAMES.get(k, k) for k in t.index])
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
        ax.set_title(method_name(m), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Hyperparameter importance per cell (Optuna)", fontsize=11)
    fig.tight_layout()
    _legend_below(fig, [plt.Rectangle((0, 0), 1, 1, color=c) for c in shades],
                  [f"{percent(p)} of labels removed" for p in props])
    return _save(fig, path)


def history(search: pd.DataFrame, path: Path, objective: str = "val/loss") -> Path:
    """Optimisation history: per cell, the best selection score (the study's ``objective``) among
    the trials that ran to the end, against the trial's order in its cell; dots are the trials."""
    from tagtune.study.objective import mode, score_key

    key, lower = score_key(objective), mode(objective) == "min"
    methods = _methods(search)
    props = sorted(search["proportion"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(0.8 + 3.3 * len(methods), 3.4),
                             squeeze=False, sharey=False)
    styles = ["-", "--", ":", "-."]
    for ax, m in zip(axes[0], methods, strict=True):
        for k, p in enumerate(props):
            t = search[(search["method"] == m) & (search["proportion"] == p)]
            t = t.sort_values("trial_number")
            value = (t[key] if key in t else pd.Series(math.nan, t.index)).where(t["status"] == "complete")
            ax.plot(t["trial_number"], (value.cummin() if lower else value.cummax()).ffill(),
                    drawstyle="steps-post",
                    linestyle=styles[k % len(styles)], color=COLORS.get(m))
            ax.scatter(t["trial_number"], value, s=10, color=COLORS.get(m), alpha=0.5)
        n = int(search["trial_number"].max()) if len(search) else 1
        ax.set_xticks(range(1, n + 1, max(1, math.ceil(n / 8))))
        ax.set_xlabel("trial (in the order it started)")
        ax.set_title(method_name(m), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(SELECTION_AXIS if objective == "val/loss" else f"best {objective} so far")
    fig.suptitle("Optimisation history per cell (lines: best so far; dots: trials run to the end)",
                 fontsize=11)
    fig.tight_layout()
    _legend_below(fig, [plt.Line2D([], [], color="black", linestyle=styles[k % len(styles)])
                        for k in range(len(props))],
                  [f"{percent(p)} of labels removed" for p in props])
    return _save(fig, path)


__all__ = ["best_hparams", "history", "importance", "replicate_boxes", "sensitivity"]
