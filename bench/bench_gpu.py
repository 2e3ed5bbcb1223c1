"""Trials on a GPU: epoch seconds on the GPU and the CPU, K trials sharing one GPU, and the
paper-sized study's projected wall time on one GPU.

Needs only torch, numpy and h5py (a GPU node may have no Ray, Optuna or MLflow): it imports
``tagtune.study.fit.train`` and nothing of ``launch`` or the trainable. One prepared run:

1. epoch seconds of B1, LE and MT on OpenMIC-size random data (12,678 training and 2,237
   validation clips of 10 x 128, 20 classes; ``bench_speed.make_data``), on the GPU (the
   generic torch path: data on the device, reference_forward, bernoulli_ dropout, fused
   Adam) and on one CPU core (the CPU path, one thread: a study's trial); the median of the
   timed epochs, the first epoch of a stage (CUDA start-up, allocator) left out;
2. K = 1, 2, 4, 8 trial processes (B1) sharing the one GPU: total epochs per second;
   Both precisions (``--precisions fp32,bf16``, TrainConfig.precision; the GPU's bf16 is
   autocast on the generic path), each step above once per precision;
3. from those, the paper-sized study (4 methods x 5 proportions x 20 trials under the study's
   ASHA, 5 replicates per cell, 100 epochs; the epochs counted by ``study_cost``) on one GPU at
   each K, and on this machine's CPU cores (one trial per core, scaling assumed perfect).
   Epochs only: Ray, MLflow and checkpoint overheads are not in it (see bench_study.py).

    python bench/bench_gpu.py                     # the GPU run (a few minutes; under 8)
    python bench/bench_gpu.py --cpu-only --quick  # the same steps on the CPU, small: seconds
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_cost  # noqa: E402
from bench_speed import N_TRAIN, N_VALID, make_data  # noqa: E402

METHODS = ("b1", "le", "mt")
FORBIDDEN = ("ray", "optuna", "mlflow")


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _path(generic: bool) -> None:
    """--cpu-only: the GPU's steps run the GPU's code path (the generic one) on the CPU."""
    from tagtune.study.nn import device

    device.GENERIC_ON_CPU = generic


def epoch_seconds(method: str, device: str, n_train: int, n_valid: int, epochs: int,
                  generic: bool = False, precision: str = "fp32") -> float:
    """Median seconds of one stage epoch of ``method`` (the first of each stage left out)."""
    import torch

    from tagtune.study.config import TrainConfig
    from tagtune.study.fit.train import fit

    _path(generic)

    ds = make_data(n_train, n_valid)
    torch.set_num_threads(1)
    stamps: list[tuple[str, float]] = []
    t0 = time.perf_counter()

    def on_epoch(logs, save):
        stamps.append((logs["stage"], time.perf_counter()))

    fit(ds, TrainConfig(method=method, epochs=epochs, device=device, precision=precision), on_epoch=on_epoch)
    times, prev, stage = [], t0, None
    for s, t in stamps:
        if s == stage:
            times.append(t - prev)
        stage, prev = s, t
    return statistics.median(times)


def _sharer(device: str, generic: bool, n_train: int, n_valid: int, epochs: int, barrier, out,
            precision: str = "fp32") -> None:
    import torch

    from tagtune.study.config import TrainConfig
    from tagtune.study.fit.train import fit

    _path(generic)

    ds = make_data(n_train, n_valid)
    torch.set_num_threads(1)
    # start-up
    fit(make_data(256, 64), TrainConfig(method="b1", epochs=1, device=device, precision=precision))
    barrier.wait()
    t0 = time.perf_counter()
    fit(ds, TrainConfig(method="b1", epochs=epochs, device=device, precision=precision))
    out.put((t0, time.perf_counter()))


def shared(k: int, device: str, generic: bool, n_train: int, n_valid: int, epochs: int,
           precision: str = "fp32") -> float:
    """Total epochs per second of ``k`` processes each training B1 on ``device`` at once."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_sharer, args=(device, generic, n_train, n_valid, epochs, barrier, out,
                                               precision)) for _ in range(k)]
    for p in procs:
        p.start()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return k * epochs / (max(e for _, e in spans) - min(s for s, _ in spans))


def project(precision: str, gpu: str, n_train: int, n_valid: int, epochs: int, ks: tuple[int, ...],
            cores: int, quick: bool) -> None:
    """Steps 1-3 in one precision: epoch seconds, K trials sharing the GPU, the projected study."""
    t_gpu = {m: epoch_seconds(m, gpu, n_train, n_valid, epochs + 1, generic=True, precision=precision)
             for m in METHODS}
    t_cpu = {m: epoch_seconds(m, "cpu", n_train, n_valid, 2 if quick else 3, precision=precision)
             for m in METHODS}
    print(f"\n{'method':8}{gpu + ' (generic) s/epoch':>26}{'cpu (1 thread) s/epoch':>25}")
    for m in METHODS:
        print(f"{m:8}{t_gpu[m]:26.3f}{t_cpu[m]:25.3f}")

    rates = {k: shared(k, gpu, True, n_train, n_valid, epochs, precision) for k in ks}
    print(f"\n{'K trials':10}{'epochs/s (total)':>18}{'x K=1':>8}")
    for k, r in rates.items():
        print(f"{k:<10}{r:18.2f}{r / rates[1]:8.2f}")

    budget, reused = study_cost.paper_study(), study_cost.paper_study(reuse_best=True)
    t_gpu["b0"], t_cpu["b0"] = t_gpu["b1"], t_cpu["b1"]  # B0's step is B1's, unmasked
    one = 1.0 / t_gpu["b1"]  # B1 epochs per second of one trial alone on the GPU
    per_cell, done = study_cost.asha_epochs()
    print(f"\npaper-sized study: 4 methods x 5 proportions x 20 trials (ASHA: {per_cell:.0f} epochs a "
          f"cell's search, {done:.0%} of trials to the end), 5 replicates x 100 epochs; "
          f"{sum(budget.total(m) for m in budget.search):,.0f} epochs"
          + (" -- --quick: epochs of 2,000 clips, not OpenMIC's" if quick else ""))
    print(f"{'where':28}{'wall':>10}{'reusing best as replicate 0':>30}")
    for k, r in rates.items():
        def wall(b: study_cost.Budget, r=r) -> float:
            return sum(b.total(m) * t_gpu[m] for m in b.search) * one / r
        print(f"{f'1 {gpu}, K = {k}':28}{study_cost.hours(wall(budget)):>10}"
              f"{study_cost.hours(wall(reused)):>30}")
    cpu_wall = [study_cost.hours(sum(b.total(m) * t_cpu[m] for m in b.search) / cores)
                for b in (budget, reused)]
    print(f"{f'{cores} CPU cores, 1 a trial':28}{cpu_wall[0]:>10}{cpu_wall[1]:>30}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-only", action="store_true", help="no GPU: every step on the CPU")
    ap.add_argument("--quick", action="store_true", help="2,000 clips, 2 epochs, K = 1, 2")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="fp32, bf16 or both: every step once per precision")
    args = ap.parse_args(argv)
    precisions = args.precisions.split(",")
    if set(precisions) - {"fp32", "bf16"}:
        ap.error(f"--precisions: use fp32, bf16 or both, not {args.precisions}")

    import torch

    if args.cpu_only:  # the GPU's code path, on the CPU
        gpu = "cpu"
    elif torch.cuda.is_available():
        gpu = "cuda"
    else:
        sys.exit("bench_gpu: torch sees no GPU; use --cpu-only")
    n_train, n_valid = (2_000, 400) if args.quick else (N_TRAIN, N_VALID)
    epochs, ks = (2, (1, 2)) if args.quick else (4, (1, 2, 4, 8))
    name = torch.cuda.get_device_name(0) if gpu == "cuda" else "none (--cpu-only: its code path on the CPU)"
    cores = usable_cores()
    print(f"GPU: {name}; CPU cores: {cores}; torch {torch.__version__}; {n_train:,} training clips")

    for precision in precisions:
        print(f"\n== precision {precision}")
        project(precision, gpu, n_train, n_valid, epochs, ks, cores, args.quick)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    print(f"\nimported Ray/Optuna/MLflow: {loaded or 'none'}")


if __name__ == "__main__":
    main()
