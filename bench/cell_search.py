"""What bench/objective_check.py and bench/rerank_check.py share: a small search per cell without
Ray, the runs scored on held-out test truth, the grid they loop over, and the comparison of a
chosen config with the paper's point.

A cell is (synthetic data set, method, proportion of training labels removed, world seed): the
data set is a new synthetic world per seed (tagtune.study.data.synth, complete truth kept), the
search is the paper's point then random draws from the study's search space (Optuna's
RandomSampler: no TPE, no ASHA, every config trained to its last epoch). Every run reports, per
epoch, its validation logs (what each objective selects by) and the selectable network's test
metrics against the complete truth, so any rule's (trial, epoch) choice is read off the same runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

OBJECTIVES = ("val/loss", "val/auprc_macro", "val/f1_macro_tuned")
TESTED = ("test_full/f1_macro", "test_full/f1_macro_tuned", "test_full/map")
LABELS = {"test_full/f1_macro": "F1 @0.5", "test_full/f1_macro_tuned": "F1 tuned", "test_full/map": "mAP"}
DATASETS = {"openmic-like": "openmic", "sonyc-like": "sonyc"}


def search_configs(method: str, preset: str, n: int, seed: int) -> list[dict[str, Any]]:
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


def cell_config(dataset: str, method: str, missing: float, seed: int, epochs: int,
                params: dict[str, Any], **extra: Any):
    """The TrainConfig of one run of a cell: the data set's preset, no lr decay (the runs are
    short), one thread and fp32 (a bench of choices, not of speed), then ``params``."""
    from tagtune.study.config import PRESETS
    from tagtune.study.folder import train_config

    preset = DATASETS[dataset]
    base = {k: v for k, v in PRESETS[preset].items() if k != "model"}
    return train_config({**base, "model": dict(PRESETS[preset]["model"]), "method": method,
                         "missing": missing, "seed": seed, "epochs": epochs, "lr_decay_epochs": [],
                         "threads": 1, "precision": "fp32", **extra, **params})


def fit_scored(ds, cfg) -> list[dict[str, float]]:
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


def pick(epochs: list[dict[str, float]], objective_name: str) -> dict[str, float]:
    """The epoch ``objective_name`` selects (as the fit loop does: its best score, the first on a tie)."""
    from tagtune.study import objective

    return min(epochs, key=lambda e: objective.of_logs(e, objective_name))


def versus(ours: Iterable[float], paper: Iterable[float]) -> dict[str, Any]:
    """Paired over cells, ``ours - paper``: how often higher / lower / tied, the two-sided sign
    test's p-value over the untied cells (scipy's exact binomial test; NaN with none untied) and
    the mean paired difference. A sign test, not a t test: the cells are different methods and
    worlds, whose differences are on no common scale."""
    from scipy.stats import binomtest

    d = [a - b for a, b in zip(ours, paper, strict=True)]
    up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return {"n": len(d), "higher": up, "lower": down, "tied": len(d) - up - down,
            "p": binomtest(up, up + down).pvalue if up + down else math.nan,
            "gain": statistics.fmean(d) if d else math.nan}


def more_often(a: Iterable[bool], b: Iterable[bool]) -> dict[str, Any]:
    """Does rule A beat the paper's point in more cells than rule B? Paired over cells (McNemar's
    exact test): the cells where only A beats it, where only B does, and the two-sided binomial
    p-value of that split (cells where both or neither beat it say nothing about the difference)."""
    from scipy.stats import binomtest

    pairs = list(zip(a, b, strict=True))
    only_a, only_b = sum(x and not y for x, y in pairs), sum(y and not x for x, y in pairs)
    return {"only_a": only_a, "only_b": only_b,
            "p": binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else math.nan}


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if not math.isnan(p) else "p = n/a"


def versus_text(v: dict[str, Any]) -> str:
    """``41/60 (12 lower), p = 0.003`` for a table cell."""
    return f"{v['higher']}/{v['n']} ({v['lower']} lower), {p_text(v['p'])}"


def parser(doc: str, quick_help: str, **defaults: Any) -> argparse.ArgumentParser:
    """The options both checks take (their grid, the search's size, where the rows go)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--datasets", default=defaults["datasets"])
    p.add_argument("--methods", default=defaults["methods"])
    p.add_argument("--missing", default=defaults["missing"])
    p.add_argument("--seeds", type=int, default=3, help="synthetic worlds (cells per method x proportion)")
    p.add_argument("--first-world", type=int, default=0, help="the first world's seed (to add worlds)")
    p.add_argument("--configs", type=int, default=8, help="configs per cell (the paper's point first)")
    p.add_argument("--epochs", type=int, default=defaults["epochs"])
    p.add_argument("--clips", type=int, default=defaults["clips"])
    p.add_argument("--out", default=defaults["out"])
    p.add_argument("--table-from", metavar="JSON",
                   help="no runs: print the table of the rows an earlier run wrote to JSON")
    return p


def run_grid(args, run_cell: Callable[..., dict[str, Any]], table: Callable[[list[dict]], str],
             note: Callable[[dict[str, Any]], str] = lambda row: "") -> list[dict[str, Any]]:
    """Every cell of the grid (data sets x proportions x methods x worlds), one line each as it
    ends; then the rows, the arguments and the table into ``args.out`` and the table printed.
    With ``--table-from``, only the table of the rows in that file (a table changed after a run)."""
    if args.table_from:
        rows = json.loads(Path(args.table_from).read_text())["rows"]
        print(table(rows))
        return rows
    rows, t0 = [], time.time()
    for dataset in args.datasets.split(","):
        for missing in (float(x) for x in args.missing.split(",")):
            for method in args.methods.split(","):
                for world in range(args.first_world, args.first_world + args.seeds):
                    rows.append(run_cell(dataset, method, missing, world, args))
                    print(f"{time.time() - t0:7.0f}s {dataset} {missing} {method} world {world}"
                          f"{note(rows[-1])}", flush=True)
    text = table(rows)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "table": text,
                                          "wall_s": time.time() - t0}, indent=1))
    print(text)
    print(f"{len(rows)} cells, {time.time() - t0:.0f} s")
    return rows
