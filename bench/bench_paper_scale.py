"""The paper-sized study on this machine's CPUs: a measured slice, projected to the whole.

The paper-sized study is 4 methods x 5 proportions x 20 trials under the study's ASHA, then 5
replicates of each cell's best config, 100 epochs. The slice runs, through the real harness
(``run_study``: Ray Tune, Optuna, per-cell ASHA, MLflow, checkpoints), one whole cell per
method -- its 20 trials and its 5 replicates, to the end -- on OpenMIC-size random data
(``bench_speed.make_data``: 12,678 training and 2,237 validation clips of 10 x 128, 20
classes), each method a study of its own so that each cell's wall time is its own. The whole
study is projected as 5 cells of each method, one after another on the same CPUs: a cell alone
keeps them as busy as 20 cells side by side do, while it has trials waiting (it has 20).

The replicate saving: the search's best trial already is a complete run of the cell's best
config with the search's seed, which is replicate 0's; a study reuses it by default
(``reuse_best_replicate``), so each cell trains one replicate fewer. The slice runs as a study
does by default (reused); the projection without the saving scales each method's wall time by
its epochs with and without it (``study_cost.paper_study(reuse_best=...)``).

Anchor: the paper's own code, at ~2.5-3.6 s an epoch on this machine and without early
stopping, would need roughly 20-40 hours for the same study.

``--together`` runs the slice as the whole study runs its cells: ONE study holding one cell per
method side by side (the first form ran each method as a study of its own, one after another,
which pays Ray's start and each cell's tail -- a core waiting for the last trial -- four times),
and measures what it took: the CPU seconds of every process of the run by role (trial workers,
Ray's daemons, the driver), and the epochs ASHA really let each method train. It also times each
method's bare epoch (``fit`` alone, one thread, bench_precision's worker) in the same run, and
gives the floor: the whole study's epochs at those seconds on every core at once -- what no
harness, scheduling or setting of ours could go below on this machine.

``--precision`` (default ``auto``, the study's default: bf16 where native) sets the trials'
``train: {precision: ...}``.

``--reproject-bf16 SPEEDUP`` re-projects the recorded fp32 slice (``RECORDED``) without
running it: each method's core-seconds per epoch split into the bare epoch (``BARE_FP32``,
bench_speed's), which bf16 divides by SPEEDUP (bench_precision's), and the harness's share
(Ray, checkpoints, MLflow), which it leaves as it is.

    python bench/bench_paper_scale.py --together   # the slice as one study, and the floor (~35 min)
    python bench/bench_paper_scale.py           # the slice: hours on 2 cores (not for a busy machine)
    python bench/bench_paper_scale.py --quick   # the same path, tiny: seconds once Ray is up
    python bench/bench_paper_scale.py --reproject-bf16 1.05   # arithmetic on the recorded slice
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_cost  # noqa: E402
from bench_speed import N_TRAIN, N_VALID, make_data  # noqa: E402
from bench_study import Sampler, is_trial_worker  # noqa: E402

PAPER = {"methods": ("b0", "b1", "le", "mt"), "proportions": 5, "trials": 20, "replicates": 5,
         "epochs": 100, "n_train": N_TRAIN, "n_valid": N_VALID}
QUICK = {"methods": ("b1",), "proportions": 5, "trials": 2, "replicates": 1, "epochs": 2,
         "n_train": 300, "n_valid": 60}
SLICE_MISSING = 0.4  # the cell measured: the middle of the paper's proportions
RECORDED = {"b0": (13 * 60, 1.62), "b1": (10 * 60, 1.17), "le": (16 * 60, 1.27), "mt": (13 * 60, 1.52)}
"""The fp32 slice measured 2026-11-28 on the 2-core VM (bench/RESULTS.md): per method, the cell's
wall seconds and its core-seconds per epoch inside the harness."""
BARE_FP32 = {"b0": 0.853, "b1": 0.842, "le": 0.961, "mt": 1.238}
"""bench_speed.py's bare fp32 epoch seconds, 1 thread, residual network (bench/RESULTS.md)."""


def _slice_data(size: dict[str, Any], out: Path) -> Path:
    from tagtune.study import data

    return data.save(make_data(size["n_train"], size["n_valid"]), out / "openmic-size.h5")


def _slice_settings(size: dict[str, Any], data: Path, out: Path, name: str, methods: tuple[str, ...],
                    cpus_per_trial: int, precision: str) -> Any:
    """A study of the slice's cells of ``methods``, as a study runs them by default (replicate 0 reused)."""
    from tagtune.study.folder import StudySettings

    return StudySettings(data=str(data), name=name, storage=str(out), methods=methods,
                         missing=(SLICE_MISSING,), trials=size["trials"], replicates=size["replicates"],
                         epochs=size["epochs"], cpus_per_trial=cpus_per_trial, reuse_best_replicate=True,
                         train={"precision": precision})


def measure(size: dict[str, Any], out: Path, cpus_per_trial: int = 1,
            precision: str = "fp32") -> list[dict[str, Any]]:
    """One study per method, one cell each, run to the end: its wall seconds and trial counts."""
    from tagtune.launch.study import run_study

    path = _slice_data(size, out)
    rows = []
    for m in size["methods"]:
        settings = _slice_settings(size, path, out, f"slice-{m}", (m,), cpus_per_trial, precision)
        t0 = time.perf_counter()
        result = run_study(settings, verbose=0)
        wall = time.perf_counter() - t0
        counts = next(iter(result.summary["cells"].values()))
        rows.append({"method": m, "wall_s": wall, "completed": counts.get("completed", 0),
                     "stopped_early": counts.get("stopped_early", 0), "failed": counts.get("failed", 0),
                     "replicates": len(result.replicates)})
    return rows


def measure_together(size: dict[str, Any], out: Path, cpus_per_trial: int = 1,
                     precision: str = "fp32") -> dict[str, Any]:
    """The slice as the study runs it: ONE study holding one cell per method, side by side (a
    fifth of the paper-sized study's cells; its trials keep the cores busy as the whole study's
    do, with one tail per phase where a core may wait, as the whole study has). Sampled from /proc:
    every process of this session (the driver, Ray's daemons, the trial workers); and the epochs
    each method really trained (ASHA decides those, not study_cost's simulation)."""
    from tagtune.launch.study import run_study

    settings = _slice_settings(size, _slice_data(size, out), out, "slice", size["methods"],
                               cpus_per_trial, precision)
    before = Sampler(os.getsid(0))
    before.sample()  # processes already running (a Ray the caller started): count only from now
    sampler = Sampler(os.getsid(0), mem_every=None)  # CPU only
    sampler.start()
    load0, t0, driver0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = run_study(settings, verbose=0)
    wall, driver = time.perf_counter() - t0, time.process_time() - driver0
    sampler.stop.set()
    sampler.join()
    driver -= sampler.own_cpu  # the sampler is a thread of this process, not the driver's work
    sampler.sample()
    cpu = _cpu_split(sampler, before, driver)
    return {"wall_s": wall, "cpu": cpu, "epochs": trained_epochs(result.study_dir),
            "cells": result.summary["cells"], "replicates": len(result.replicates), "load_before": load0}


def _cpu_split(sampler: Sampler, before: Sampler, driver: float) -> dict[str, float]:
    """CPU seconds the run took, by role: the trial workers, Ray's own daemons (both from /proc,
    less what a process had used before the run), and the driver (this process)."""
    split = {"trials": 0.0, "ray": 0.0, "driver": driver}
    for key, sec in sampler.cpu.items():
        if key[0] == os.getpid():
            continue
        role = "trials" if is_trial_worker(sampler.names.get(key, "")) else "ray"
        split[role] += sec - before.cpu.get(key, 0.0)
    return split


def trained_epochs(study_dir: Path) -> dict[str, int]:
    """Epochs each method trained in a study: every trial's reported epochs (search and replicate
    phases) plus the shared LE teachers' (those train outside any trial)."""
    import json

    from tagtune.launch.trainable import EARLIER
    from tagtune.study.fit.teachers import TeacherCache
    from tagtune.study.folder import TEACHERS

    epochs: dict[str, int] = {}
    for result in study_dir.glob("*/*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            # A report carries the epochs held since the last one (EARLIER), and a last report
            # may repeat its trial's last epoch (a replicate's test metrics): each epoch once.
            seen = {int(e["epoch"]) for row in rows for e in (*row.get(EARLIER, ()), row)}
            method = rows[0]["config"]["method"]
            epochs[method] = epochs.get(method, 0) + len(seen)
    cache = TeacherCache(study_dir / TEACHERS)
    for t in cache.trainings():
        meta = json.loads((cache.root / t["key"] / "meta.json").read_text())
        epochs["le"] = epochs.get("le", 0) + meta["epochs"]  # the slice's one teacher-sharing method
    return epochs


def bare_epoch(method: str, precision: str) -> float:
    """Seconds of one OpenMIC-size epoch (LE: per stage) of ``fit`` alone: bench_precision's worker."""
    from bench_precision import spawn

    return spawn(method, 1, precision, PAPER["n_train"], PAPER["n_valid"], False)["wall"]


def report_together(r: dict[str, Any], size: dict[str, Any], precision: str) -> dict[str, Any]:
    """Print the together-slice and its projection: the whole study is ``proportions`` such slices
    one after another (each slice's one-per-phase tail counted every time: an over- not an
    under-estimate)."""
    cores = os.cpu_count() or 1
    epochs = sum(r["epochs"].values())
    busy = sum(r["cpu"].values())
    r["whole_s"] = r["wall_s"] * size["proportions"]
    r["core_s_per_epoch"] = busy / epochs
    print(f"slice ({precision}), one study: one cell per method (missing {SLICE_MISSING}) side by side, "
          f"{size['trials']} trials + {size['replicates']} replicates, {size['epochs']} epochs, "
          f"{size['n_train']:,} training clips, {cores} cores (load before {r['load_before']:.2f})")
    print(f"  wall {study_cost.hours(r['wall_s'])}; epochs trained "
          + ", ".join(f"{m} {e:,}" for m, e in sorted(r["epochs"].items())) + f" ({epochs:,} in all)")
    print(f"  CPU {busy:,.0f} core-s = trials {r['cpu']['trials']:,.0f} + Ray {r['cpu']['ray']:,.0f} "
          f"+ driver {r['cpu']['driver']:,.0f}; {r['core_s_per_epoch']:.2f} core-s per epoch trained; "
          f"cores busy {busy / (r['wall_s'] * cores):.0%}")
    print(f"projected whole study ({len(size['methods'])} methods x {size['proportions']} proportions): "
          f"{study_cost.hours(r['whole_s'])}")
    if r.get("bare"):
        # The study's epochs (study_cost, the replicate reused) at the bare epoch's seconds, on
        # every core at once: what no harness, scheduler or precision setting of ours can go below.
        _, reused = budgets(size)
        r["floor_s"] = sum(reused.total(m) * r["bare"][m] for m in r["bare"]) / cores
        seconds = ", ".join(f"{m} {s:.3f} s" for m, s in r["bare"].items())
        print(f"  bare epoch (fit alone, 1 thread): {seconds}"
              + f"; the whole study's {sum(reused.total(m) for m in r['bare']):,.0f} epochs at those "
              f"seconds on {cores} cores: {study_cost.hours(r['floor_s'])} (the floor)")
    return r


def budgets(size: dict[str, Any]) -> tuple[study_cost.Budget, study_cost.Budget]:
    """The study's epochs as study_cost counts them: every replicate trained, and replicate 0 reused."""
    args = (size["methods"], size["proportions"], size["trials"], size["replicates"], size["epochs"])
    return study_cost.paper_study(*args), study_cost.paper_study(*args, reuse_best=True)


def project(rows: list[dict[str, Any]], size: dict[str, Any]) -> dict[str, float]:
    """Whole-study wall seconds as measured (the replicate reused): each method's cell wall x the
    proportions; and without the saving, each method's wall scaled by its epochs' ratio."""
    plain, reused = budgets(size)
    whole = sum(r["wall_s"] * size["proportions"] for r in rows)
    unsaved = sum(r["wall_s"] * size["proportions"] * plain.total(r["method"]) / reused.total(r["method"])
                  for r in rows)
    return {"whole_s": whole, "not_reused_s": unsaved}


def reproject(speedup: float, proportions: int = 5) -> dict[str, Any]:
    """The recorded fp32 slice's projection, and the same with each bare epoch ``speedup`` times
    faster (the harness's share of an epoch unchanged): whole-study wall seconds, and per method
    the core-seconds per epoch before and after."""
    rows = {}
    for m, (wall, core_s) in RECORDED.items():
        after = core_s - BARE_FP32[m] + BARE_FP32[m] / speedup
        rows[m] = {"wall_s": wall, "core_s_per_epoch": core_s, "bf16_core_s_per_epoch": after,
                   "bf16_wall_s": wall * after / core_s}
    return {"rows": rows, "fp32_s": sum(r["wall_s"] for r in rows.values()) * proportions,
            "bf16_s": sum(r["bf16_wall_s"] for r in rows.values()) * proportions}


def main(argv: list[str] | None = None, out: Path | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B1 only, 2 trials, 2 epochs, 300 clips")
    ap.add_argument("--cpus-per-trial", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"),
                    help="the trials' TrainConfig.precision (default: the study's default, auto)")
    ap.add_argument("--together", action="store_true",
                    help="the slice as ONE study, its cells side by side (as the whole study runs)")
    ap.add_argument("--reproject-bf16", type=float, metavar="SPEEDUP",
                    help="no run: the recorded fp32 slice re-projected with bare epochs SPEEDUP x faster")
    args = ap.parse_args(argv)
    if args.reproject_bf16 is not None:
        r = reproject(args.reproject_bf16)
        print(f"{'method':8}{'fp32 core-s/epoch':>19}{'bf16 core-s/epoch':>19}")
        for m, row in r["rows"].items():
            print(f"{m:8}{row['core_s_per_epoch']:>19.2f}{row['bf16_core_s_per_epoch']:>19.2f}")
        print(f"projected whole study, recorded fp32 slice: {study_cost.hours(r['fp32_s'])}; "
              f"bare epochs {args.reproject_bf16:.2f}x faster (bf16): {study_cost.hours(r['bf16_s'])}")
        return r
    size = QUICK if args.quick else PAPER
    if args.together:
        # The bare epoch of each method (a fresh process, 1 thread, no harness) in this run too: the
        # floor the study could reach were Ray, Optuna, MLflow and the scheduling free.
        bare = {} if args.quick else {m: bare_epoch(m, args.precision) for m in size["methods"]}
        with tempfile.TemporaryDirectory(prefix="paper-scale-") as tmp:
            r = measure_together(size, Path(out or tmp), args.cpus_per_trial, args.precision)
        return report_together({**r, "bare": bare}, size, args.precision)
    with tempfile.TemporaryDirectory(prefix="paper-scale-") as tmp:
        rows = measure(size, Path(out or tmp), args.cpus_per_trial, args.precision)
    proj = project(rows, size)
    print(f"slice ({args.precision}): one cell per method (missing {SLICE_MISSING}), "
          f"{size['trials']} trials + {size['replicates']} replicates, {size['epochs']} epochs, "
          f"{size['n_train']:,} training clips")
    # The cell's epochs as study_cost counts them (ASHA simulated): wall x cores / epochs is the
    # core-seconds an epoch took inside the harness, to set beside bench_speed's bare epoch.
    _, reused = budgets(size)
    cores = os.cpu_count() or 1
    print(f"{'method':8}{'cell wall':>12}{'to the end':>12}{'stopped':>9}{'replicates':>12}"
          f"{'epochs (est.)':>15}{'core-s/epoch':>14}")
    for r in rows:
        epochs = reused.total(r["method"]) / size["proportions"]
        r["core_s_per_epoch"] = r["wall_s"] * cores / epochs
        print(f"{r['method']:8}{study_cost.hours(r['wall_s']):>12}{r['completed']:>12}"
              f"{r['stopped_early']:>9}{r['replicates']:>12}{epochs:>15,.0f}{r['core_s_per_epoch']:>14.2f}")
    print(f"projected whole study ({len(size['methods'])} methods x {size['proportions']} proportions): "
          f"{study_cost.hours(proj['whole_s'])}; training replicate 0 again (--no-reuse-best-replicate): "
          f"{study_cost.hours(proj['not_reused_s'])}")
    print("anchor: the paper's code, no early stopping, ~20-40 h")
    return {"rows": rows, **proj}


if __name__ == "__main__":
    main()
