"""Seconds per training epoch in fp32 and in bf16 (``TrainConfig.precision``), as ratios measured in one run.

Every timing runs in a fresh Python process (``--worker``), the thread budget set before torch
is imported, as in ``bench_speed.py``: OpenMIC-size random data (``bench_speed.make_data``:
12,678 training and 2,237 validation clips of 10 x 128, 20 classes), a warm-up fit of the same
shapes, then one whole epoch of ``fit(ds, TrainConfig(method, epochs=1, precision=...))`` end to
end -- data to tensors, model, optimizer, training, validation loss and metrics. LE's figure is
per stage epoch (half its two-stage total).

The machine may be shared: within each repeat the two precisions alternate, and the table gives
the best of the repeats per cell and the ratio fp32 / bf16 of those (> 1: bf16 faster), and the
same ratio of the best process CPU times (at 1 thread it does not count time spent waiting for a
core, so it is what a quiet machine's wall ratio would be; at 2 it counts OpenMP's spinning).
The last line is the geometric mean of the cells' wall ratios.

``--generic`` also times the generic torch path (what a GPU runs: ``reference_forward``, under
autocast in bf16) on the CPU, the measurement behind running bf16 inside the hand-fused kernels
instead (tagtune.study.nn.precision).

    python bench/bench_precision.py            # B1, LE, MT at 1 and 2 threads, 3 repeats
    python bench/bench_precision.py --quick    # 2,000 clips, 1 repeat: under 2 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import HIDDEN, LAYERS, N_TRAIN, N_VALID, make_data, n_stages  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def worker(method: str, threads: int, precision: str, n_train: int, n_valid: int, generic: bool) -> dict:
    """One timing, in this (fresh) process."""
    import torch

    from tagtune.study.config import ModelConfig, TrainConfig
    from tagtune.study.fit.train import fit
    from tagtune.study.nn import device

    torch.set_num_threads(threads)
    device.GENERIC_ON_CPU = generic
    # The warm-up fit has the timed fit's shapes: oneDNN builds a bf16 kernel per new shape
    # (the last, short batch; the validation batches), a one-off cost a real run pays once.
    ds, warm = make_data(n_train, n_valid), make_data(n_train, n_valid, seed=1)
    cfg = TrainConfig(method=method, epochs=1, threads=threads, precision=precision,
                      model=ModelConfig(layers=LAYERS, hidden=HIDDEN))
    fit(warm, cfg)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fit(ds, cfg)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"method": method, "threads": threads, "precision": precision, "generic": generic,
            "wall": wall / n_stages(method), "cpu": cpu / n_stages(method)}


def spawn(method: str, threads: int, precision: str, n_train: int, n_valid: int, generic: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", method, str(threads), precision, str(n_train),
           str(n_valid), str(int(generic))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {method} {threads} {precision} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_note() -> str:
    """The CPU's bf16 support, as torch and /proc/cpuinfo say."""
    import torch

    from tagtune.study.nn.precision import cpu_native_bf16

    return (f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"native bf16 {'yes' if cpu_native_bf16() else 'no'}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 training clips, one repeat (< 2 min)")
    ap.add_argument("--methods", default="b1,le,mt")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3; quick 1)")
    ap.add_argument("--generic", action="store_true", help="also the generic torch path (autocast)")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        method, threads, precision, n_train, n_valid, generic = args.worker
        print(json.dumps(worker(method, int(threads), precision, int(n_train), int(n_valid),
                                bool(int(generic)))))
        return {}
    n_train, n_valid = (2_000, 400) if args.quick else (N_TRAIN, N_VALID)
    repeats = args.repeats or (1 if args.quick else 3)
    methods, threads = args.methods.split(","), [int(t) for t in args.threads.split(",")]
    paths = (False, True) if args.generic else (False,)
    print(f"{n_train} train / {n_valid} valid clips of 10 x 128, 20 classes, L={LAYERS}, H={HIDDEN}, "
          f"batch 64; best of {repeats}; {cpu_note()}")
    print(f"{'path':8s} {'method':6s} {'threads':>7s} {'fp32 s/ep':>10s} {'bf16 s/ep':>10s} {'speed-up':>9s} "
          f"{'cpu-time speed-up':>18s}")
    runs, ratios = [], []
    for generic, method, t in [(g, m, t) for g in paths for m in methods for t in threads]:
        cell: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
        for i in range(repeats):
            for p in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:  # alternate who goes first
                r = spawn(method, t, p, n_train, n_valid, generic)
                cell[p].append(r)
                runs.append(r)
        fp32, bf16 = (min(r["wall"] for r in cell[p]) for p in PRECISIONS)
        cpu = min(r["cpu"] for r in cell["fp32"]) / min(r["cpu"] for r in cell["bf16"])
        if not generic:
            ratios.append(fp32 / bf16)
        print(f"{'generic' if generic else 'fused':8s} {method:6s} {t:7d} {fp32:10.3f} {bf16:10.3f} "
              f"{fp32 / bf16:8.2f}x {cpu:17.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    speedup = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"bf16 vs fp32 epoch speed-up: {speedup:.2f}x")
    return {"runs": runs, "speedup": speedup}


if __name__ == "__main__":
    main()
