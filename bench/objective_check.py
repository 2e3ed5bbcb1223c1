"""Objective check: which validation objective picks configs that are best on held-out test truth?

A study chooses, per cell, a trial (config) and, per trial, an epoch by its objective
(tagtune.study.objective): ``val/loss`` (BCE over the observed validation labels, the only rule
before the setting), ``val/auprc_macro`` or ``val/f1_macro_tuned``. Here, on synthetic data with
complete truth (tagtune.study.data.synth, openmic-like and sonyc-like, scaled to ``--clips``),
for every method, several proportions of training labels removed and several seeds (each seed
a new synthetic world and a new training seed), a small search per cell is run without Ray:
the paper's point first, then ``--configs - 1`` configs drawn at random from the study's search
space (tagtune.search_spaces.SPACES through Optuna's RandomSampler, seeded). Each config is
trained ONCE: the training does not depend on the objective (no patience here), only the
selection does -- but for LE and LE+MT, whose student learns from the teacher the objective
selected: there each objective trains its own runs, as in a study (until 2026-12-06 every
objective read LE's runs with a teacher chosen by val/loss). After every epoch the selectable
network is also scored on the TEST split against the complete truth (F1 macro at 0.5, F1 macro
with thresholds tuned on the observed validation labels, mAP), so each objective's (trial, epoch)
choice is read off the same runs.

Reported per data set x proportion x objective, over methods and seeds: the mean test quality
of the chosen (trial, epoch) and how often it beats the paper's settings as a study used them
before the setting (the paper's point, its epoch chosen by ``val/loss``), on F1 and on mAP. The
test clips are never used to choose: unlike the issue's in-study figure (validation clips scored
against their complete truth), this is held out. Then, per objective, paired over the cells (the
chosen config and the paper's point ran on the same seed, the same world): in how many cells the
chosen config's test figure is above the paper's point's, with a two-sided sign test, and the mean
paired gain (issue 33: does the search's choice beat the paper's settings more often than the
choice by ``val/loss`` did?).

    python bench/objective_check.py --quick       # a small version, minutes on 2 cores
    python bench/objective_check.py               # the full grid (see the options' defaults)
    python bench/objective_check.py --table-from objective_check.json   # the table again, no runs
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cell_search as cs  # noqa: E402  (the part both checks share)

LEGACY = "val/loss"
"""What a study selected by before the setting: "today's choice" in the issue."""


def run_cell(dataset: str, method: str, missing: float, seed: int, args) -> dict[str, Any]:
    from tagtune.study import objective
    from tagtune.study.data.synth import synthesize
    from tagtune.study.methods.registry import stages

    ds = synthesize(dataset, seed=seed, n_clips=args.clips)
    configs = cs.search_configs(method, cs.DATASETS[dataset], args.configs, seed)

    def search(name: str) -> list[dict[str, Any]]:
        return [{"config": i, "epochs": cs.fit_scored(ds, cs.cell_config(dataset, method, missing, seed,
                                                                  args.epochs, params, objective=name))}
                for i, params in enumerate(configs)]

    # A one-stage fit trains the same whatever the objective (only the selection differs), so its
    # runs serve every objective; LE's and LE+MT's student learns from the teacher the objective
    # selected, so there each objective has runs of its own, as in a study.
    shared = search(LEGACY) if len(stages(method)) == 1 else None
    runs = {name: shared or search(name) for name in cs.OBJECTIVES}
    out: dict[str, Any] = {"dataset": dataset, "method": method, "missing": missing, "seed": seed}
    for name in cs.OBJECTIVES:
        chosen = min(runs[name], key=lambda r: objective.of_logs(cs.pick(r["epochs"], name), name))
        epoch = cs.pick(chosen["epochs"], name)
        paper = cs.pick(runs[name][0]["epochs"], name)
        out[name] = {"config": chosen["config"], **{k: epoch[k] for k in cs.TESTED},
                     "paper_same_rule": {k: paper[k] for k in cs.TESTED}}
    out["paper_today"] = {k: cs.pick(runs[LEGACY][0]["epochs"], LEGACY)[k] for k in cs.TESTED}
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | removed | objective | test F1 @0.5 | test F1 tuned | test mAP | "
             "beats paper (F1) | beats paper (mAP) | n |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["missing"]) for r in rows})
    for dataset, missing in keys:
        group = [r for r in rows if (r["dataset"], r["missing"]) == (dataset, missing)]
        for name in cs.OBJECTIVES:
            m = {k: statistics.fmean(r[name][k] for r in group) for k in cs.TESTED}
            wins = {k: sum(r[name][k] > r["paper_today"][k] for r in group) for k in cs.TESTED}
            lines.append(f"| {dataset} | {100 * missing:.0f}% | {name} | {m['test_full/f1_macro']:.3f} | "
                         f"{m['test_full/f1_macro_tuned']:.3f} | {m['test_full/map']:.3f} | "
                         f"{wins['test_full/f1_macro']}/{len(group)} | {wins['test_full/map']}/{len(group)} "
                         f"| {len(group)} |")
    paper = {k: statistics.fmean(r["paper_today"][k] for r in rows) for k in cs.TESTED}
    lines.append(f"| all | paper point, val/loss epoch | (before) | {paper['test_full/f1_macro']:.3f} | "
                 f"{paper['test_full/f1_macro_tuned']:.3f} | {paper['test_full/map']:.3f} | | "
                 f"| {len(rows)} |")
    return "\n".join(lines + ["", versus_paper_table(rows), "", versus_legacy_table(rows)])


def versus_paper_table(rows: list[dict[str, Any]]) -> str:
    """Per objective (and data set), the chosen config against the paper's point on the same seed:
    cells where it is higher on test (of n; lower ones in brackets; ties are the paper's point
    chosen at the same epoch), the sign test, the mean paired gain. Two paper points: its epoch by
    val/loss (one bar for every objective: the paper's settings as a study ran them before), and
    by the same objective (what a study's replicated paper point and its ``gain`` use)."""
    head = ["| data | objective | paper point's epoch by |"
            + "".join(f" beats paper, {cs.LABELS[k]} | gain {cs.LABELS[k]} |" for k in cs.TESTED),
            "|---|---|---|" + "---|---|" * len(cs.TESTED)]
    lines = []
    for dataset in [*sorted({r["dataset"] for r in rows}), "all"]:
        group = [r for r in rows if dataset in ("all", r["dataset"])]
        for reference, ref_name in (("paper_today", LEGACY), ("paper_same_rule", "the same objective")):
            for name in cs.OBJECTIVES:
                if reference == "paper_same_rule" and name == LEGACY:  # the row above, again
                    continue
                cells = ""
                for k in cs.TESTED:
                    paper = [r[reference][k] if reference == "paper_today" else r[name][reference][k]
                             for r in group]
                    v = cs.versus((r[name][k] for r in group), paper)
                    cells += f" {cs.versus_text(v)} | {v['gain']:+.3f} |"
                lines.append(f"| {dataset} | {name} | {ref_name} |{cells}")
    return "\n".join(head + lines)


def versus_legacy_table(rows: list[dict[str, Any]]) -> str:
    """Each other objective against val/loss's choice ("today's"), paired over the cells: does it
    beat the paper's point (its epoch by val/loss) in more cells (the cells where only it does /
    only val/loss's choice does, McNemar's exact p), and its test figure against val/loss's choice
    itself (higher of n, lower in brackets, sign test; mean paired gain)."""
    head = ["| data | objective |" + "".join(f" beats paper, only it / only val/loss, {cs.LABELS[k]} | "
                                             f"vs val/loss's choice, {cs.LABELS[k]} | gain {cs.LABELS[k]} |"
                                             for k in cs.TESTED),
            "|---|---|" + "---|---|---|" * len(cs.TESTED)]
    lines = []
    for dataset in [*sorted({r["dataset"] for r in rows}), "all"]:
        group = [r for r in rows if dataset in ("all", r["dataset"])]
        for name in cs.OBJECTIVES:
            if name == LEGACY:
                continue
            cells = ""
            for k in cs.TESTED:
                m = cs.more_often((r[name][k] > r["paper_today"][k] for r in group),
                                  (r[LEGACY][k] > r["paper_today"][k] for r in group))
                v = cs.versus((r[name][k] for r in group), (r[LEGACY][k] for r in group))
                cells += (f" {m['only_a']} / {m['only_b']}, {cs.p_text(m['p'])} | {cs.versus_text(v)} | "
                          f"{v['gain']:+.3f} |")
            lines.append(f"| {dataset} | {name} |{cells}")
    return "\n".join(head + lines)


def main(argv: list[str] | None = None) -> None:
    from tagtune.study.methods.registry import METHODS

    p = cs.parser(__doc__, "small: 500 clips, 8 epochs, 3 configs, 3 seeds",
                  datasets="openmic-like,sonyc-like", methods=",".join(METHODS), missing="0.0,0.4,0.8",
                  epochs=30, clips=3000, out="objective_check.json")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.epochs, args.configs = 500, 8, 3
    cs.run_grid(args, run_cell, table)


if __name__ == "__main__":
    main()
