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
selection does. After every epoch the selectable network is also scored on the TEST split
against the complete truth (F1 macro at 0.5, F1 macro with thresholds tuned on the observed
validation labels, mAP), so each objective's (trial, epoch) choice is read off the same runs.

Reported per data set x proportion x objective, over methods and seeds: the mean test quality
of the chosen (trial, epoch) and how often it beats the paper's settings as a study used them
before the setting (the paper's point, its epoch chosen by ``val/loss``), on F1 and on mAP. The
test clips are never used to choose: unlike the issue's in-study figure (validation clips scored
against their complete truth), this is held out.

    python bench/objective_check.py --quick       # a small version, minutes on 2 cores
    python bench/objective_check.py               # the full grid (see the options' defaults)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

OBJECTIVES = ("val/loss", "val/auprc_macro", "val/f1_macro_tuned")
TESTED = ("test_full/f1_macro", "test_full/f1_macro_tuned", "test_full/map")
DATASETS = {"openmic-like": "openmic", "sonyc-like": "sonyc"}


def _search_configs(method: str, preset: str, n: int, seed: int) -> list[dict[str, Any]]:
    """The paper's point, then n - 1 random draws from the method's search space (seeded)."""
    import optuna

    from tagtune.search_spaces import SPACES, Ranges, paper_point

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ranges = Ranges()
    out = [paper_point(method, preset, ranges)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n - 1):
        out.append(SPACES[method](study.ask(), ranges))
    return out


def _fit_scored(ds, cfg) -> list[dict[str, float]]:
    """Fit ``cfg``; per epoch of the last stage, its validation logs and the selectable network's
    test metrics against the complete truth (f1_macro_tuned with validation-tuned thresholds)."""
    from tagtune.study.eval.metrics import evaluate, tuned_thresholds
    from tagtune.study.fit import train
    from tagtune.study.nn.model import predict

    per_epoch: list[dict[str, float]] = []
    pending: list[dict[str, float]] = []
    validate = train._validate

    # The fit loop validates the selectable network first each epoch (then MT's other one): score
    # that one on the test split too. A bench-only wrap of the loop's own function.
    def scored(model, data, split, taxonomy, prefix="val", thresholds=None):
        out = validate(model, data, split, taxonomy, prefix, thresholds)
        if prefix == "val" and not pending:
            t = tuned_thresholds(ds.valid.Y, predict(model, ds.valid.X), ds.valid.M)
            test = evaluate(ds.test, predict(model, ds.test.X), "test", None, t)
            pending.append({k: test[k] for k in TESTED})
        return out

    def on_epoch(logs, save):
        per_epoch.append({**{k: logs[k] for k in OBJECTIVES}, "stage": logs["stage"], **pending[0]})
        pending.clear()

    train._validate = scored
    try:
        train.fit(ds, cfg, on_epoch=on_epoch)
    finally:
        train._validate = validate
    last = per_epoch[-1]["stage"]
    return [e for e in per_epoch if e["stage"] == last]


def run_cell(dataset: str, method: str, missing: float, seed: int, args) -> dict[str, Any]:
    from tagtune.study import objective
    from tagtune.study.config import PRESETS
    from tagtune.study.data.synth import synthesize
    from tagtune.study.folder import train_config

    preset = DATASETS[dataset]
    ds = synthesize(dataset, seed=seed, n_clips=args.clips)
    base = {k: v for k, v in PRESETS[preset].items() if k != "model"}
    runs = []
    for i, params in enumerate(_search_configs(method, preset, args.configs, seed)):
        config = {**base, "model": dict(PRESETS[preset]["model"]), "method": method, "missing": missing,
                  "seed": seed, "epochs": args.epochs, "lr_decay_epochs": [], "threads": 1,
                  "precision": "fp32", **params}
        runs.append({"config": i, "epochs": _fit_scored(ds, train_config(config))})

    def pick(epochs, name):  # the epoch this objective selects, and its score
        return min(epochs, key=lambda e: objective.of_logs(e, name))

    out: dict[str, Any] = {"dataset": dataset, "method": method, "missing": missing, "seed": seed}
    for name in OBJECTIVES:
        chosen = min(runs, key=lambda r: objective.of_logs(pick(r["epochs"], name), name))
        epoch = pick(chosen["epochs"], name)
        paper = pick(runs[0]["epochs"], name)
        out[name] = {"config": chosen["config"], **{k: epoch[k] for k in TESTED},
                     "paper_same_rule": {k: paper[k] for k in TESTED}}
    out["paper_today"] = {k: pick(runs[0]["epochs"], "val/loss")[k] for k in TESTED}
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | removed | objective | test F1 @0.5 | test F1 tuned | test mAP | "
             "beats paper (F1) | beats paper (mAP) | n |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["missing"]) for r in rows})
    for dataset, missing in keys:
        group = [r for r in rows if (r["dataset"], r["missing"]) == (dataset, missing)]
        for name in OBJECTIVES:
            m = {k: statistics.fmean(r[name][k] for r in group) for k in TESTED}
            wins = {k: sum(r[name][k] > r["paper_today"][k] for r in group) for k in TESTED}
            lines.append(f"| {dataset} | {100 * missing:.0f}% | {name} | {m['test_full/f1_macro']:.3f} | "
                         f"{m['test_full/f1_macro_tuned']:.3f} | {m['test_full/map']:.3f} | "
                         f"{wins['test_full/f1_macro']}/{len(group)} | {wins['test_full/map']}/{len(group)} "
                         f"| {len(group)} |")
    paper = {k: statistics.fmean(r["paper_today"][k] for r in rows) for k in TESTED}
    lines.append(f"| all | paper point, val/loss epoch | (before) | {paper['test_full/f1_macro']:.3f} | "
                 f"{paper['test_full/f1_macro_tuned']:.3f} | {paper['test_full/map']:.3f} | | "
                 f"| {len(rows)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from tagtune.study.methods.registry import METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small: 500 clips, 8 epochs, 3 configs, 3 seeds")
    p.add_argument("--datasets", default="openmic-like,sonyc-like")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--missing", default="0.0,0.4,0.8")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--configs", type=int, default=8, help="configs per cell (the paper's point first)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--clips", type=int, default=3000)
    p.add_argument("--out", default="objective_check.json")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.epochs, args.configs = 500, 8, 3
    rows, t0 = [], time.time()
    for dataset in args.datasets.split(","):
        for missing in (float(x) for x in args.missing.split(",")):
            for method in args.methods.split(","):
                for seed in range(args.seeds):
                    rows.append(run_cell(dataset, method, missing, seed, args))
                    print(f"{time.time() - t0:7.0f}s {dataset} {missing} {method} seed {seed}", flush=True)
    text = table(rows)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "table": text}, indent=1))
    print(text)
    print(f"{len(rows)} cells, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
