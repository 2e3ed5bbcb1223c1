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

    python bench/bench_paper_scale.py           # the slice: hours on 2 cores (not for a busy machine)
    python bench/bench_paper_scale.py --quick   # the same path, tiny: seconds once Ray is up
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

PAPER = {"methods": ("b0", "b1", "le", "mt"), "proportions": 5, "trials": 20, "replicates": 5,
         "epochs": 100, "n_train": N_TRAIN, "n_valid": N_VALID}
QUICK = {"methods": ("b1",), "proportions": 5, "trials": 2, "replicates": 1, "epochs": 2,
         "n_train": 300, "n_valid": 60}
SLICE_MISSING = 0.4  # the cell measured: the middle of the paper's proportions


def measure(size: dict[str, Any], out: Path, cpus_per_trial: int = 1) -> list[dict[str, Any]]:
    """One study per method, one cell each, run to the end: its wall seconds and trial counts."""
    from tagtune.launch.study import run_study
    from tagtune.study import data
    from tagtune.study.folder import StudySettings

    path = data.save(make_data(size["n_train"], size["n_valid"]), out / "openmic-size.h5")
    rows = []
    for m in size["methods"]:
        settings = StudySettings(data=str(path), name=f"slice-{m}", storage=str(out), methods=(m,),
                                 missing=(SLICE_MISSING,), trials=size["trials"],
                                 replicates=size["replicates"], epochs=size["epochs"],
                                 cpus_per_trial=cpus_per_trial, reuse_best_replicate=True)
        t0 = time.perf_counter()
        result = run_study(settings, verbose=0)
        wall = time.perf_counter() - t0
        counts = next(iter(result.summary["cells"].values()))
        rows.append({"method": m, "wall_s": wall, "completed": counts.get("completed", 0),
                     "stopped_early": counts.get("stopped_early", 0), "failed": counts.get("failed", 0),
                     "replicates": len(result.replicates)})
    return rows


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


def main(argv: list[str] | None = None, out: Path | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B1 only, 2 trials, 2 epochs, 300 clips")
    ap.add_argument("--cpus-per-trial", type=int, default=1)
    args = ap.parse_args(argv)
    size = QUICK if args.quick else PAPER
    with tempfile.TemporaryDirectory(prefix="paper-scale-") as tmp:
        rows = measure(size, Path(out or tmp), args.cpus_per_trial)
    proj = project(rows, size)
    print(f"slice: one cell per method (missing {SLICE_MISSING}), {size['trials']} trials + "
          f"{size['replicates']} replicates, {size['epochs']} epochs, {size['n_train']:,} training clips")
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
