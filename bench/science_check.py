"""Science check: does tagtune reproduce the paper's basic finding on openmic-like data?

Gururani & Lerch (2021): treating missing labels as negatives (B0) is clearly worst; label
enhancing (LE) and mean teacher (MT) at least match masking them (B1). Here: synthetic
openmic-like data (~10% of labels observed), 40% and 80% of the observed training labels
removed, 3 seeds, the paper's OpenMIC hyperparameters (gamma 10, alpha 0.999, beta 3,
lr 1e-3, L=3, H=128, dropout 0.6), F1 macro against the complete truth on the test split.

    python bench/science_check.py [--epochs 50] [--n-clips 20000] [--workers 2]

Prints a table (method x proportion: mean ± sd over seeds) and writes it as CSV.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

METHODS = ("b0", "b1", "le", "mt")


def _run(job: tuple[str, str, float, int, int]) -> dict:
    path, method, missing, seed, epochs = job
    os.environ["OMP_NUM_THREADS"] = "1"
    from tagtune.study.config import PRESETS, TrainConfig, from_dict
    from tagtune.study.data import load
    from tagtune.study.train import evaluate_fit, fit

    preset = PRESETS["openmic"]
    cfg = from_dict(TrainConfig, {**preset, "method": method, "missing": missing, "seed": seed,
                                  "epochs": epochs, "threads": 1})  # the paper's lr halving at 30/60/90
    t0 = time.perf_counter()
    result = fit(load(path), cfg)
    metrics = evaluate_fit(result, load(path))
    return {"method": method, "missing": missing, "seed": seed, "seconds": time.perf_counter() - t0,
            **{k: v for k, v in metrics.items() if k.startswith("test")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--n-clips", type=int, default=20000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--missing", default="0.4,0.8")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()

    from tagtune.study import data
    from tagtune.study.data.synth import synthesize

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"science-openmic-like-{args.n_clips}.h5"
    if not path.exists():
        data.save(synthesize("openmic-like", seed=0, n_clips=args.n_clips), path)
    proportions = [float(p) for p in args.missing.split(",")]
    jobs = [(str(path), m, p, s, args.epochs) for p in proportions for m in METHODS
            for s in range(args.seeds)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_run, jobs))
    df = pd.DataFrame(rows)
    df.to_csv(out / "science_check.csv", index=False)

    metric = "test_full/f1_macro"
    table = df.groupby(["missing", "method"])[metric].agg(["mean", "std"]).unstack("method")
    print(f"\n{metric} (mean ± sd over {args.seeds} seeds), {args.n_clips} clips, "
          f"{args.epochs} epochs per stage, {time.perf_counter() - t0:.0f} s")
    print("missing  " + "  ".join(f"{m:>13s}" for m in METHODS))
    for p in proportions:
        cells = [f"{table.loc[p, ('mean', m)]:.3f} ± {table.loc[p, ('std', m)]:.3f}" for m in METHODS]
        print(f"{p:7.0%}  " + "  ".join(f"{c:>13s}" for c in cells))
    gaps = {p: float(np.min([table.loc[p, ("mean", m)] for m in ("b1", "le", "mt")])
                     - table.loc[p, ("mean", "b0")]) for p in proportions}
    print("smallest gap of B1/LE/MT over B0: " + ", ".join(f"{p:.0%}: {g:+.3f}" for p, g in gaps.items()))


if __name__ == "__main__":
    main()
