"""Science check: the paper's comparison of B0/B1/LE/MT, before and after the network and MT fixes.

Gururani & Lerch (2021): treating missing labels as negatives (B0) is clearly worst; label
enhancing (LE) and mean teacher (MT) at least match masking them (B1), MT best on OpenMIC.
Here: synthetic openmic-like and sonyc-like data, 40% and 80% of the observed training
labels removed, 3 seeds, 40 epochs per stage, the paper's hyperparameters (the ``openmic``
/ ``sonyc`` presets: gamma, alpha, beta, L, H, dropout), in three setups:

- ``before``: tagtune's network (residual), MT without the EMA warm-up, lr 1e-3 for every
  method -- what this check ran before;
- ``paper``: the paper's exact setup (``--preset openmic-paper`` / ``sonyc-paper``: its
  network, the warm-up, MT's student reported, each run script's lr);
- ``default``: tagtune's defaults now (``DEFAULT_ARCH``, the warm-up, MT's teacher, the
  paper's per-method lr as a study's first point).

A configuration that several setups share (B0/B1/LE do not read MT's settings) runs once.
Metrics: openmic-like, ``test_full/f1_macro`` (F1 macro against the complete truth);
sonyc-like, the official DCASE fine-level macro AUPRC where computed, else scikit-learn's
macro AUPRC against the complete truth. Prints a markdown table (mean ± sd over seeds)
and writes every run and the table to JSON.

    python bench/science_check.py                # the full check (see --estimate for its time)
    python bench/science_check.py --estimate     # time one epoch per network x method x data
    python bench/science_check.py --quick        # tiny sizes, seconds: does it still run?

Options beyond the paper's grid: ``--methods all`` adds the newer methods (lemt, llr, hill,
splc, pbce, wan, epr; in the ``default`` setup only: the other two are about the paper's own
fixes) and ``--positives-only`` adds the positives-only view of openmic-like data
(``openmic-like/positives-only``: only positive training labels observed), where the methods
that need observed negatives (b1, mt, pbce) show n/a.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

METHODS = ("b0", "b1", "le", "mt")
"""The paper's four: the default grid, in every setup."""
POSITIVES_ONLY = "openmic-like/positives-only"
SETUPS = ("before", "paper", "default")
DATASETS = {"openmic-like": "openmic", "sonyc-like": "sonyc"}  # synthetic data -> preset
METRICS = {"openmic-like": ("test_full/f1_macro",),
           "sonyc-like": ("test/dcase_fine_macro_auprc", "test_full/auprc_macro")}


def config(dataset: str, setup: str, method: str, missing: float, seed: int, epochs: int,
           precision: str = "fp32") -> dict:
    """The TrainConfig (as a dict) of one run; fields the method does not read are left at
    their defaults, so runs identical by construction have equal configs."""
    from tagtune.study.config import (
        DEFAULT_ARCH,
        TrainConfig,
        applies,
        from_dict,
        paper_lr,
        preset_config,
        to_dict,
    )

    preset = DATASETS[dataset.removesuffix("/positives-only")]
    run = {"method": method, "missing": missing, "seed": seed, "epochs": epochs, "threads": 1,
           "precision": precision}
    if setup == "paper":
        d = {**preset_config(f"{preset}-paper", method), **run}
    else:
        d = preset_config(preset, method)
        d["model"]["arch"] = "residual" if setup == "before" else DEFAULT_ARCH
        d |= {"ema_warmup": setup != "before", "lr": 1e-3 if setup == "before" else paper_lr(preset, method),
              **run}
    d = to_dict(from_dict(TrainConfig, d))
    default = to_dict(TrainConfig())
    return {k: v if applies(method, k) else default[k] for k, v in d.items()}


@functools.lru_cache(maxsize=3)
def _load(path: str):
    from tagtune.study.data import load

    return load(path)


def fit_one(job: tuple[str, dict]) -> dict:
    """Fit one config on one data file; its test metrics and seconds."""
    import torch

    from tagtune.study.config import TrainConfig, from_dict
    from tagtune.study.fit.train import evaluate_fit, fit

    torch.set_num_threads(1)
    path, cfg = job
    ds = _load(path)
    t0, cpu0 = time.perf_counter(), time.process_time()
    metrics = evaluate_fit(fit(ds, from_dict(TrainConfig, cfg)), ds)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
            **{k: v for k, v in metrics.items() if k.startswith("test")}}


def data_file(dataset: str, out: Path, n_clips: int | None) -> Path:
    from tagtune.study import data
    from tagtune.study.data.synth import synthesize

    base, _, view = dataset.partition("/")
    path = out / f"science-{base}-{n_clips or 'full'}{'-' + view if view else ''}.h5"
    if not path.exists():
        ds = synthesize(base, seed=0, n_clips=n_clips)
        data.save(data.positives_only(ds) if view == "positives-only" else ds, path)
    return path


def runs_in(dataset: str, setup: str, method: str) -> bool:
    """Whether the grid has this cell: the newer methods in the default setup only, and on the
    positives-only view only the methods that can learn from it."""
    from tagtune.study.methods import supports

    if method not in METHODS and setup != "default":
        return False
    return supports(method, "positives-only" if dataset == POSITIVES_ONLY else "partial")


def _map(jobs: list, workers: int) -> list:
    if workers <= 1:
        return [fit_one(j) for j in jobs]
    # spawn: every worker imports torch afresh, with the thread budget already in its env
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(fit_one, jobs))


def table(rows: list[dict], seeds: int, methods: tuple[str, ...] = METHODS) -> tuple[str, list[dict]]:
    """Markdown: one line per dataset x missing x setup, mean ± sd of the headline metric."""
    lines = ["| data | missing | setup | metric | " + " | ".join(m.upper() for m in methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    summary = []
    several = len({r.get("precision", "fp32") for r in rows}) > 1  # then the setup names it
    keys = sorted({(r["dataset"], r["missing"], SETUPS.index(r["setup"]), r.get("precision", "fp32"))
                   for r in rows})
    for dataset, missing, s, precision in keys:
        setup = SETUPS[s]
        cell = [r for r in rows if (r["dataset"], r["missing"], r["setup"], r.get("precision", "fp32"))
                == (dataset, missing, setup, precision)]
        candidates = METRICS[dataset.removesuffix("/positives-only")]
        metric = next(m for m in candidates if any(m in r for r in cell))
        out = []
        for method in methods:
            v = [r[metric] for r in cell if r["method"] == method and r.get(metric) is not None]
            mean, sd = (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) if v else (None, None)
            summary.append({"dataset": dataset, "missing": missing, "setup": setup, "precision": precision,
                            "method": method, "metric": metric, "mean": mean, "sd": sd, "n": len(v)})
            out.append("n/a" if mean is None else f"{mean:.3f} ± {sd:.3f}")
        label = f"{setup} {precision}" if several else setup
        lines.append(f"| {dataset} | {missing:.0%} | {label} | {metric} | " + " | ".join(out) + " |")
    return "\n".join(lines) + f"\n\n(mean ± sd over {seeds} seeds)", summary


PRECISION_METRICS = ("test_full/f1_macro", "test_full/map")
"""The precision table's metrics (complete truth, on both synthetic datasets): F1 macro, mAP."""


def precision_table(rows: list[dict], methods: tuple[str, ...]) -> tuple[str, list[dict]]:
    """Markdown: per dataset x missing x setup x method, bf16 minus fp32 of each metric, paired by
    seed (mean ± sd of the differences), beside the fp32 runs' seed spread (sd over seeds); a
    method moves beyond its spread where |mean difference| > that sd."""
    by = {(r["dataset"], r["missing"], r["setup"], r["method"], r["seed"], r.get("precision", "fp32")): r
          for r in rows}
    lines = ["| data | missing | method | " + " | ".join(
        f"{m} fp32 | {m} bf16 - fp32 | {m} seed sd | beyond" for m in PRECISION_METRICS) + " |",
             "|---|---|---|" + "---|---|---|---|" * len(PRECISION_METRICS)]
    summary = []
    for dataset, missing, setup in sorted({(r["dataset"], r["missing"], r["setup"]) for r in rows}):
        for method in methods:
            seeds = sorted({k[4] for k in by if k[:4] == (dataset, missing, setup, method)})
            cells = []
            for metric in PRECISION_METRICS:
                pairs = [(by[(dataset, missing, setup, method, s, "fp32")].get(metric),
                          by[(dataset, missing, setup, method, s, "bf16")].get(metric)) for s in seeds
                         if (dataset, missing, setup, method, s, "bf16") in by
                         and (dataset, missing, setup, method, s, "fp32") in by]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                if not pairs:
                    continue
                fp32 = [a for a, _ in pairs]
                diff = [b - a for a, b in pairs]
                sd = statistics.stdev(fp32) if len(fp32) > 1 else 0.0
                mean_diff = statistics.mean(diff)
                sd_diff = statistics.stdev(diff) if len(diff) > 1 else 0.0
                beyond = abs(mean_diff) > sd
                summary.append({"dataset": dataset, "missing": missing, "setup": setup, "method": method,
                                "metric": metric, "fp32": statistics.mean(fp32), "diff": mean_diff,
                                "diff_sd": sd_diff, "seed_sd": sd, "beyond": beyond, "n": len(pairs)})
                cells.append(f"{statistics.mean(fp32):.3f} | {mean_diff:+.4f} ± {sd_diff:.4f} | {sd:.4f} | "
                             + ("**yes**" if beyond else "no"))
            if cells:
                lines.append(f"| {dataset} | {missing:.0%} | {method.upper()} | " + " | ".join(cells) + " |")
    n_beyond = sum(s["beyond"] for s in summary)
    verdict = (f"\n\n{n_beyond} of {len(summary)} (method, data, metric) cells move beyond their fp32 "
               f"seed spread: bf16 is {'NOT ' if n_beyond else ''}safe by this check")
    return "\n".join(lines) + verdict, summary


def plan(args) -> tuple[list[dict], dict[str, tuple[str, dict]]]:
    """Every (dataset, setup, method, missing, seed) row and the unique jobs they need."""
    rows, jobs = [], {}
    for dataset in args.datasets:
        path = str(data_file(dataset, args.out, args.n_clips.get(dataset)))
        for setup in args.setups:
            for method in args.methods:
                if not runs_in(dataset, setup, method):
                    continue
                for missing, seed, precision in [(m, s, p) for m in args.missing for s in range(args.seeds)
                                                 for p in args.precisions]:
                    cfg = config(dataset, setup, method, missing, seed, args.epochs, precision)
                    key = json.dumps([path, cfg], sort_keys=True)
                    jobs.setdefault(key, (path, cfg))
                    rows.append({"dataset": dataset, "setup": setup, "method": method, "missing": missing,
                                 "seed": seed, "precision": precision, "job": key})
    return rows, jobs


def estimate(args, jobs: dict[str, tuple[str, dict]]) -> None:
    """Time one epoch of each distinct (data, network, method) and extrapolate to the plan:
    from the CPU time (what a quiet core would take) and from the wall time (this machine now)."""
    from tagtune.study.methods import stages as method_stages

    per_epoch = {}
    for path, cfg in jobs.values():
        kind = (path, cfg["model"]["arch"], cfg["method"])
        if kind not in per_epoch:
            stages = len(method_stages(cfg["method"]))
            r = fit_one((path, {**cfg, "epochs": 1}))
            per_epoch[kind] = (r["cpu_seconds"] / stages, r["seconds"] / stages)
            print(f"  {Path(path).name} {kind[1]:8s} {kind[2]}: {per_epoch[kind][0]:.1f} s/epoch CPU, "
                  f"{per_epoch[kind][1]:.1f} s wall", flush=True)
    for i, what in enumerate(("CPU time (a quiet machine)", "wall time (this machine's load now)")):
        total = sum(per_epoch[(p, c["model"]["arch"], c["method"])][i] * c["epochs"]
                    * len(method_stages(c["method"])) for p, c in jobs.values())
        print(f"{len(jobs)} runs from {what}: {total / 3600:.1f} core-hours, "
              f"~{total / args.workers / 3600:.1f} h with {args.workers} workers")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--missing", default="0.4,0.8")
    ap.add_argument("--datasets", default="openmic-like,sonyc-like")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated, or all: the paper's four and the newer seven")
    ap.add_argument("--setups", default=",".join(SETUPS),
                    help="comma-separated subset of before,paper,default (newer methods: default only)")
    ap.add_argument("--positives-only", action="store_true",
                    help="also the positives-only view of openmic-like data")
    ap.add_argument("--n-clips", dest="clips", type=int, default=None,
                    help="clips per synthetic dataset (default: the real datasets' sizes)")
    ap.add_argument("--precisions", default="fp32",
                    help="fp32, bf16 or both (fp32,bf16: every run in each, and the bf16 - fp32 table)")
    ap.add_argument("--workers", type=int, default=2, help="processes, 1 thread each")
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, 1 seed, 40%% only")
    ap.add_argument("--estimate", action="store_true", help="time one epoch per kind of run, then stop")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # inherited by workers
    from tagtune.study.config import METHODS as ALL_METHODS

    args.datasets = args.datasets.split(",") + ([POSITIVES_ONLY] if args.positives_only else [])
    args.methods = ALL_METHODS if args.methods == "all" else tuple(args.methods.split(","))
    args.missing = [float(p) for p in args.missing.split(",")]
    args.setups = tuple(args.setups.split(","))
    args.precisions = tuple(args.precisions.split(","))
    if unknown := set(args.precisions) - {"fp32", "bf16"}:
        ap.error(f"--precisions: unknown {', '.join(sorted(unknown))} (choose from fp32, bf16)")
    if unknown := set(args.setups) - set(SETUPS):
        ap.error(f"--setups: unknown {', '.join(sorted(unknown))} (choose from {', '.join(SETUPS)})")
    args.n_clips = {"openmic-like": 20_000, "sonyc-like": None,  # sonyc-like: SONYC-UST's own sizes
                    POSITIVES_ONLY: 20_000}
    if args.clips is not None:
        args.n_clips = dict.fromkeys(args.n_clips, args.clips)
    if args.quick:
        args.epochs, args.seeds, args.missing, args.workers = 1, 1, [0.4], 1
        args.n_clips = dict.fromkeys(args.n_clips, 120)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, jobs = plan(args)
    if args.estimate:
        estimate(args, jobs)
        return {}
    t0 = time.perf_counter()
    results = dict(zip(jobs, _map(list(jobs.values()), args.workers), strict=True))
    for r in rows:
        r |= results[r.pop("job")]
    text, summary = table(rows, args.seeds, args.methods)
    print(f"\n{len(jobs)} runs for {len(rows)} rows, {args.epochs} epochs per stage, "
          f"{time.perf_counter() - t0:.0f} s\n\n{text}")
    report = {"epochs": args.epochs, "seeds": args.seeds, "missing": args.missing,
              "n_clips": args.n_clips, "summary": summary, "runs": rows, "table": text}
    if set(args.precisions) == {"fp32", "bf16"}:
        report["precision_table"], report["precision_summary"] = precision_table(rows, args.methods)
        print(f"\nbf16 - fp32, paired by seed:\n\n{report['precision_table']}")
    tag = "quick" if args.quick else "_".join(args.datasets).replace("/", "-")
    if args.setups != SETUPS:
        tag += "_" + "_".join(args.setups)
    if args.precisions != ("fp32",):
        tag += "_" + "_".join(args.precisions)
    name = f"science_check_{tag}.json"
    (args.out / name).write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
