"""Seconds per training epoch: tagtune's fit loop against a conventional, paper-like loop.

Every timing runs in a fresh Python process (``--worker``), with the thread budget set
before torch is imported (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) and again through
``torch.set_num_threads``. A worker builds OpenMIC-size random data (12,678 training and
2,237 validation clips of 10 x 128, 20 classes, ~10% of the labels observed), warms up
on a small set (imports, allocator, MKL), then times one whole epoch end to end:
tagtune's ``fit(ds, TrainConfig(method, epochs=1))`` -- data to tensors, model, optimizer,
training, validation loss and metrics -- against ``bench/conventional.py`` doing the same
work (per-sample Dataset + DataLoader, nn.Dropout, nn.BCELoss, default Adam, per-epoch
validation with the same metrics). LE runs its two stages (teacher epoch, teacher scores,
student epoch); its figures are per stage epoch (half the total), for both.

The machine may be shared: the two implementations alternate, ``--repeats`` times, and
the table gives the best of the repeats (the least disturbed run) with, in brackets, the
ratio of the medians, and the ratio of the best CPU times (process time: at 1 thread it
does not count time spent waiting for a core; at 2 it counts OpenMP's spinning).

GFLOP/s: floating-point operations of the matrix products (linear layers and attention
heads), counted analytically -- training step 3x the forward (forward, input gradient,
weight gradient), MT's teacher 1x, every validation or scoring forward 1x -- divided by
tagtune's epoch time.

Both networks (``--archs residual,paper``): tagtune's and the paper code's, each against
the conventional loop running the same network.

    python bench/bench_speed.py            # full size, b0 b1 le mt at 1 and 2 threads, both networks
    python bench/bench_speed.py --quick    # 2,000 clips, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

N_TRAIN, N_VALID, T, F, C = 12_678, 2_237, 10, 128, 20
LAYERS, HIDDEN, BATCH = 3, 128, 64


def make_data(n_train: int, n_valid: int, seed: int = 0):
    """Random clips with ~10% of the labels observed, as a tagtune Dataset."""
    import numpy as np

    from tagtune.study.data import Dataset, Split

    rng = np.random.default_rng(seed)

    def split(n: int, prefix: str) -> Split:
        X = rng.normal(size=(n, T, F)).astype(np.float32)
        M = rng.random((n, C)) < 0.1
        Y = ((rng.random((n, C)) < 0.3) & M).astype(np.float32)
        return Split(X, Y, M, np.array([f"{prefix}{i}" for i in range(n)]))

    return Dataset(train=split(n_train, "tr"), valid=split(n_valid, "va"),
                   test=split(64, "te"), classes=tuple(f"c{i}" for i in range(C)), name="bench")


def forward_flops(frames: int) -> float:
    """Multiply-adds x 2 of the linear layers and the two heads for ``frames`` frames."""
    widths = [F] + [HIDDEN] * LAYERS
    per_frame = sum(a * b for a, b in zip(widths, widths[1:], strict=False)) + 2 * widths[-1] * C
    return 2.0 * per_frame * frames


def epoch_flops(method: str, n_train: int, n_valid: int) -> float:
    """FLOPs of one epoch (LE: of both stages and the teacher's scoring pass)."""
    train_frames = n_train * T  # every clip once (a lone last clip may wait an epoch)
    valid = forward_flops(n_valid * T)
    if method == "mt":  # student forward + backward, teacher forward; both validated
        return 4 * forward_flops(train_frames) + 2 * valid
    if method == "le":
        return 2 * (3 * forward_flops(train_frames) + valid) + forward_flops(n_train * T)
    if method == "lemt":  # two MT stages and the teacher's scoring pass
        return 2 * (4 * forward_flops(train_frames) + 2 * valid) + forward_flops(n_train * T)
    return 3 * forward_flops(train_frames) + valid  # the one-network losses (b0, llr, hill, ...)


CONVENTIONAL = ("b0", "b1", "le", "mt")
"""Methods bench/conventional.py implements; the others are timed on tagtune's loop only."""


def n_stages(method: str) -> int:
    from tagtune.study.methods import stages

    return len(stages(method))


def worker(impl: str, method: str, threads: int, n_train: int, n_valid: int,
           arch: str = "residual") -> dict:
    """One timing, in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ds, warm = make_data(n_train, n_valid), make_data(256, 64, seed=1)
    if impl == "ours":
        from tagtune.study.config import ModelConfig, TrainConfig
        from tagtune.study.fit.train import fit

        # fp32, as the paper's code computes: the comparison is of the code, not of the arithmetic
        # (bf16, the default where native, is bench_precision.py's)
        cfg = TrainConfig(method=method, epochs=1, threads=threads, precision="fp32",
                          model=ModelConfig(layers=LAYERS, hidden=HIDDEN, arch=arch))

        def run(d):
            return fit(d, cfg)
    else:
        import conventional

        def run(d):
            tr, va = d.train, d.valid
            torch.manual_seed(0)
            return conventional.run((tr.X, tr.Y, tr.M.astype("float32")),
                                    (va.X, va.Y, va.M.astype("float32")), method, epochs=1,
                                    layers=LAYERS, hidden=HIDDEN, arch=arch)

    run(warm)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run(ds)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stages = n_stages(method)
    return {"impl": impl, "method": method, "arch": arch, "threads": threads, "wall": wall / stages,
            "cpu": cpu / stages, "torch_threads": torch.get_num_threads()}


def spawn(impl: str, method: str, threads: int, n_train: int, n_valid: int, arch: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", impl, method, str(threads), str(n_train),
           str(n_valid), arch]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {impl} {method} {threads} {arch} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 training clips, one repeat")
    ap.add_argument("--methods", default="b0,b1,le,mt",
                    help="any of tagtune's methods (b0,b1,le,mt,lemt,llr,hill,splc,pbce,wan,epr); "
                         "the conventional loop exists for b0,b1,le,mt only")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--archs", default="residual,paper", help="networks: residual, paper")
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3; quick 1)")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        impl, method, threads, n_train, n_valid, arch = args.worker
        print(json.dumps(worker(impl, method, int(threads), int(n_train), int(n_valid), arch)))
        return
    n_train, n_valid = (2_000, 400) if args.quick else (N_TRAIN, N_VALID)
    repeats = args.repeats or (1 if args.quick else 3)
    methods, threads = args.methods.split(","), [int(t) for t in args.threads.split(",")]
    archs = args.archs.split(",")
    runs = []
    print(f"{n_train} train / {n_valid} valid clips of {T} x {F}, {C} classes, L={LAYERS}, "
          f"H={HIDDEN}, batch {BATCH}; best of {repeats} (ratio of medians in brackets)")
    print(f"{'net':8s} {'method':6s} {'threads':>7s} {'ours s/ep':>10s} {'conv s/ep':>10s} "
          f"{'ratio':>13s} {'GFLOP/s':>8s} {'cpu ratio':>10s}")
    for arch, method, t in [(a, m, t) for a in archs for m in methods for t in threads]:
        impls = ("conv", "ours") if method in CONVENTIONAL else ("ours",)
        cell = {impl: [] for impl in impls}
        for _ in range(repeats):
            for impl in impls:
                r = spawn(impl, method, t, n_train, n_valid, arch)
                cell[impl].append(r)
                runs.append(r)
        wall = {k: [r["wall"] for r in v] for k, v in cell.items()}
        cpu = {k: min(r["cpu"] for r in v) for k, v in cell.items()}
        ours = min(wall["ours"])
        gflops = epoch_flops(method, n_train, n_valid) / n_stages(method) / ours / 1e9
        if "conv" not in cell:  # no conventional loop to compare with
            print(f"{arch:8s} {method:6s} {t:7d} {ours:10.3f} {'-':>10s} {'-':>13s} {gflops:8.1f} "
                  f"{'-':>10s}", flush=True)
            continue
        conv = min(wall["conv"])
        med = statistics.median(wall["conv"]) / statistics.median(wall["ours"])
        print(f"{arch:8s} {method:6s} {t:7d} {ours:10.3f} {conv:10.3f} {conv / ours:6.2f}x "
              f"({med:4.2f}x) {gflops:8.1f} {cpu['conv'] / cpu['ours']:9.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
