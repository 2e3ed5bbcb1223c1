"""Fused trials against separate ones: trial-epochs per second of N configs trained as one stacked
network (tagtune.study.fit.stacked) and of N trials each in its own process, and the paper-sized
study's projected wall time both ways, on one device.

Needs only torch, numpy and h5py, as bench_gpu.py (whose helpers it uses): nothing of
``tagtune.launch``, Ray, Optuna or MLflow. One prepared run, on the GPU (or the CPU with --cpu-only),
on OpenMIC-size random data (``bench_speed.make_data``), fp32:

1. fused: one ``Stack`` of N B1 configs (seeds 0..N-1, lrs log-spaced over 3e-4..3e-3, 40% of the
   labels removed) at one thread, N = 1, 4, 16, 64; whole epochs timed (the stacked training pass,
   then each member's validation), the median of the timed epochs, the first left out (start-up,
   allocator); trial-epochs per second = N / that. Fused members always take the generic path;
2. separate: the trials each in its own process at one thread, sharing the device
   (``bench_gpu.shared``, B1: the generic path on a GPU; on a CPU the CPU path, as a study's
   trial), at most one process per CPU core at a time (a process needs a core to feed a GPU, and
   on a CPU to compute; the other trials wait their turn), so N trials run at the rate of
   min(N, cores) processes. With --cpu-only the generic path's separate trials are measured too;
3. MT (a student and a teacher network) fused, at the largest N the time budget leaves room for;
4. the paper-sized study (``study_cost``: 4 methods x 5 proportions x 20 trials under ASHA, 5
   replicates of 100 epochs, the best trial reused as replicate 0 as a study does by default),
   fused at the fastest N and separate at the fastest number of processes. B0's and LE's epochs
   cost B1's (the same network and step), MT's its own; separate MT costs B1's rate times MT's
   solo epoch over B1's. Epochs only: Ray, MLflow, checkpoints are not in it, nor the stack
   shrinking as ASHA stops members (new trials assumed to take their place).

A GPU is one unit: one stack against K processes sharing it. A CPU's unit is a core: a stack at
one thread is compared with separate trials per core (a stack at several threads measures the
other users of a shared machine more than itself: each tiny op waits at a thread barrier), and
the study's projection runs one stack, or one trial, per core, scaling assumed perfect for both.

A time budget (``--budget`` seconds) bounds the run: a step whose projected time would pass it is
skipped, and a stack times fewer epochs (at least one), the reason printed. The full GPU run stays
under ~4 minutes on one H100 by construction (1 + 3 epochs per N; at N = 64 an OpenMIC-size epoch
is a few seconds there).

    python bench/bench_fused.py                          # the GPU run (under ~4 min)
    python bench/bench_fused.py --cpu-only --quick       # the same steps on the CPU, small: < 1 min
    python bench/bench_fused.py --cpu-only --n 1,4,8     # OpenMIC size on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_cost  # noqa: E402
from bench_gpu import epoch_seconds, shared, usable_cores  # noqa: E402
from bench_speed import N_TRAIN, N_VALID, make_data  # noqa: E402

FORBIDDEN = ("ray", "optuna", "mlflow", "tagtune.launch")
MISSING = 0.4  # a study cell's proportion; the step's cost does not depend on it


class Clock:
    """The run's time budget: a step whose projected seconds would pass it is skipped, and said so."""

    def __init__(self, seconds: float):
        self.seconds, self.end, self.skipped = seconds, time.perf_counter() + seconds, []

    def fits(self, what: str, need: float) -> bool:
        left = self.end - time.perf_counter()
        if need <= left:
            return True
        self.skipped.append(f"{what}: ~{need:.0f} s projected, {max(left, 0):.0f} s of the "
                            f"{self.seconds:.0f} s budget left")
        print(f"skipped {self.skipped[-1]}", flush=True)
        return False


def lrs(n: int) -> list[float]:
    """n learning rates log-spaced over 3e-4..3e-3: every member a different trial."""
    return [3e-4 * 10 ** (k / max(n - 1, 1)) for k in range(n)]


def fused(ds, method: str, n: int, device: str, epochs: int, clock: Clock) -> tuple[float, float]:
    """Trial-epochs per second of ``n`` configs of ``method`` as one stack, and the share of a core
    the process had in the timed epochs (below 1 on a CPU: other users took the rest). Fewer epochs
    are timed (at least one) where the next would pass the budget."""
    import torch

    from tagtune.study.config import TrainConfig
    from tagtune.study.fit.stacked import Stack

    base = TrainConfig(method=method, epochs=epochs, device=device, missing=MISSING)  # one thread
    cfgs = [replace(base, seed=k, lr=lr) for k, lr in enumerate(lrs(n))]
    stack = Stack(ds, cfgs[0])
    for cfg in cfgs:
        stack.add(cfg)
    times: list[float] = []
    cpu = 0.0
    while stack.active:
        if len(times) >= 2 and not clock.fits(f"fused {method.upper()} N = {n}: its epochs past "
                                              f"{len(times) - 1} of {epochs - 1} timed", times[-1]):
            break
        t, c = time.perf_counter(), time.process_time()
        stack.epoch()
        if device == "cuda":  # validation reads its metrics back, but be sure the epoch's work is done
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu += (time.process_time() - c) if len(times) > 1 else 0.0
    return n / statistics.median(times[1:]), cpu / sum(times[1:])


def separate(k: int, device: str, generic: bool, n_train: int, n_valid: int,
             epochs: int) -> tuple[float, float, float]:
    """Total epochs per second of ``k`` B1 trial processes at once; the wall of the step and the part
    of it that trained (the rest is start-up: spawn, imports, data, a warm-up fit)."""
    t0 = time.perf_counter()
    rate = shared(k, device, generic, n_train, n_valid, epochs)
    return rate, time.perf_counter() - t0, k * epochs / rate


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def per_unit(row: dict, device: str) -> float:
    """Separate trials' epochs per second per unit of the device a stack uses: the GPU, or a core."""
    return row["separate"] / row["processes"] if device == "cpu" else row["separate"]


def minutes(s: float) -> str:
    return f"{s / 60:.0f}"


def measure(args, device: str, cores: int) -> dict:
    """Steps 1-3; the figures as a dict (see --out)."""
    n_train, n_valid = (2_000, 400) if args.quick else (N_TRAIN, N_VALID)
    epochs = 3 if args.quick else 4  # fused: the first of them left out
    sep_epochs = 2 if args.quick else 3  # each separate process's whole fit, timed
    clock = Clock(args.budget)
    gen = device != "cpu"  # a separate trial's path: generic on a GPU, the CPU path on a CPU
    fig: dict = {"n_train": n_train, "n_valid": n_valid, "fused_epochs_timed": epochs - 1,
                 "separate_epochs": sep_epochs, "process_cap": cores,
                 "b1": {}, "mt": None}

    # A solo trial's epoch of B1 and MT on the separate path: MT's cost relative to B1's.
    solo = {m: epoch_seconds(m, device, n_train, n_valid, 2 if args.quick else 3, generic=gen)
            for m in ("b1", "mt")}
    fig["solo_epoch_s"] = solo
    print(f"solo trial ({'generic' if gen else 'CPU'} path) s/epoch: B1 {solo['b1']:.3f}, "
          f"MT {solo['mt']:.3f}", flush=True)

    # Separate trials first: a few cheap steps, and the comparison every fused figure needs.
    paths = [("separate", gen)] + ([("separate_generic", True)] if device == "cpu" else [])
    rates: dict[str, dict[int, float]] = {key: {} for key, _ in paths}
    for key, generic in paths:
        prev: tuple[int, float, float] | None = None
        for k in sorted({min(n, cores) for n in args.n}):
            if prev and not clock.fits(f"{key} K = {k}", prev[1] - prev[2] + prev[2] * k / prev[0]):
                break  # start-up as before, the training part growing as K (at most)
            rate, wall, trained = separate(k, device, generic, n_train, n_valid, sep_epochs)
            rates[key][k], prev = rate, (k, wall, trained)
            print(f"{key.replace('_', ' ')} K = {k}: {rate:.2f} epochs/s ({wall:.0f} s)", flush=True)

    ds = make_data(n_train, n_valid)
    epoch_s: dict[int, float] = {}  # fused B1's median epoch seconds by N
    for n in args.n:
        k = min(n, cores)
        if k not in rates["separate"]:
            continue
        if epoch_s:  # the warm-up and one timed epoch at least; an epoch grows at most as N
            last = max(epoch_s)
            if not clock.fits(f"fused B1 N = {n}", 2 * epoch_s[last] * n / last):
                break
        rate, share = fused(ds, "b1", n, device, epochs, clock)
        epoch_s[n] = n / rate
        row = fig["b1"][str(n)] = {"fused": rate, "core_share": share, "processes": k,
                                   **{key: r[k] for key, r in rates.items() if k in r}}
        row["ratio"] = rate / per_unit(row, device)
        print(f"fused B1 N = {n}: {rate:.2f} trial-epochs/s ({n / rate:.1f} s an epoch, "
              f"{share:.0%} of a core)", flush=True)

    # MT at the largest N whose warm-up and one timed epoch, at MT's solo cost over B1's, fit.
    for n in sorted(epoch_s, reverse=True):
        if clock.fits(f"fused MT N = {n}", 2 * epoch_s[n] * solo["mt"] / solo["b1"]):
            rate, share = fused(ds, "mt", n, device, epochs, clock)
            fig["mt"] = {"n": n, "fused": rate, "core_share": share}
            print(f"fused MT N = {n}: {rate:.2f} trial-epochs/s ({n / rate:.1f} s an epoch, "
                  f"{share:.0%} of a core)", flush=True)
            break
    fig["skipped"] = clock.skipped
    return fig


def project(fig: dict, device: str, cores: int, quick: bool) -> tuple[float, float]:
    """Step 4: the paper-sized study's seconds on the device, fused and separate."""
    budget = study_cost.paper_study(reuse_best=True)
    mt = budget.total("mt")
    rest = sum(budget.total(m) for m in budget.search if m != "mt")  # B0, B1, LE: B1's cost
    units = cores if device == "cpu" else 1  # a CPU: one stack, or one trial, per core
    b1 = fig["b1"]
    n_best = max(b1, key=lambda n: b1[n]["fused"])
    k_best = max(b1.values(), key=lambda r: per_unit(r, device))
    ratio = fig["solo_epoch_s"]["mt"] / fig["solo_epoch_s"]["b1"]
    if fig["mt"] is None:  # no room for MT: its solo cost ratio stands in
        print("MT fused: not measured; MT's epochs at B1's fused rate / MT's solo cost ratio")
        mt_rate = b1[n_best]["fused"] / ratio
    else:
        mt_rate = fig["mt"]["fused"]
    fused_s = (rest / b1[n_best]["fused"] + mt / mt_rate) / units
    separate_s = (rest + mt * ratio) / (per_unit(k_best, device) * units)
    fig["projection"] = {"epochs": rest + mt, "fused_n": int(n_best),
                         "separate_processes": k_best["processes"], "units": units,
                         "fused_min": fused_s / 60, "separate_min": separate_s / 60}
    per_cell, _ = study_cost.asha_epochs()
    print(f"\npaper-sized study: 4 methods x 5 proportions x 20 trials (ASHA: {per_cell:.0f} epochs a "
          f"cell's search), 5 replicates x 100 epochs, the best trial reused: {rest + mt:,.0f} epochs "
          f"({mt:,.0f} of MT)" + (" -- --quick: epochs of 2,000 clips, not OpenMIC's" if quick else ""))
    where = f"{cores} stacks, one a core" if units > 1 else "one stack"
    print(f"  fused, N = {n_best} (MT at N = {fig['mt']['n'] if fig['mt'] else '-'}), {where}: "
          f"{study_cost.hours(fused_s)}")
    where = (f"{cores} trials at once, at the per-core rate of K = {k_best['processes']}" if units > 1
             else f"{k_best['processes']} trials at once")
    print(f"  separate, {where}: {study_cost.hours(separate_s)}")
    return fused_s, separate_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-only", action="store_true", help="no GPU: every step on the CPU")
    ap.add_argument("--quick", action="store_true", help="2,000 clips, 1 + 2 epochs, N = 1, 4")
    ap.add_argument("--n", help="stack sizes, comma-separated (default 1,4,16,64; --quick 1,4)")
    ap.add_argument("--budget", type=float, default=200.0,
                    help="seconds the measurements may take; a step that would pass it is skipped")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    args.n = [int(x) for x in (args.n or ("1,4" if args.quick else "1,4,16,64")).split(",")]

    import torch

    if args.cpu_only:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        sys.exit("bench_fused: torch sees no GPU; use --cpu-only")
    cores = usable_cores()
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{cpu_name()} ({cores} cores)"
    load = os.getloadavg()
    print(f"device: {name}; torch {torch.__version__}; CPU cores: {cores}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")
    print(f"separate trials: at most {cores} processes at once (one per CPU core), the rest wait; "
          f"a stack and a separate trial at one thread each", flush=True)

    fig = measure(args, device, cores)
    cpu = device == "cpu"
    print(f"\n{'N':>4}{'fused trial-epochs/s':>22}{'processes':>11}{'separate epochs/s':>19}"
          f"{'fused / separate, per ' + ('core' if cpu else 'GPU'):>28}"
          + (f"{'separate, generic':>19}" if cpu else ""))
    for n, row in fig["b1"].items():
        extra = f"{row['separate_generic']:19.2f}" if "separate_generic" in row else ""
        print(f"{n:>4}{row['fused']:22.2f}{row['processes']:11}{row['separate']:19.2f}{row['ratio']:28.2f}{extra}")
    if fig["mt"]:
        print(f"MT fused at N = {fig['mt']['n']}: {fig['mt']['fused']:.2f} trial-epochs/s")

    fused_s, separate_s = project(fig, device, cores, args.quick)
    end = os.getloadavg()
    fig.update(device=name, cpu_only=args.cpu_only, quick=args.quick, torch=torch.__version__, cores=cores,
               loadavg_start=list(load), loadavg_end=list(end))
    if args.out:
        args.out.write_text(json.dumps(fig, indent=2) + "\n")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN or m.startswith(FORBIDDEN))
    print(f"load average at the end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}; "
          f"imported Ray/Optuna/MLflow/tagtune.launch: {loaded or 'none'}")
    print(f"paper-sized study projected: fused {minutes(fused_s)} min vs separate {minutes(separate_s)} min "
          f"on {name}")


if __name__ == "__main__":
    main()
