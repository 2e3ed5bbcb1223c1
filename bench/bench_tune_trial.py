"""What a Ray Tune trial costs by itself: the same fits, one to a Tune trial or ``--pack`` to one.

The fits are plain ``fit`` calls of one cell's configs (``b1``, model 1 x 16, fp32, seeded
learning rates), run through plain Ray Tune -- no Optuna, no ASHA, no MLflow, no journal, no
checkpoints, Tune's own file loggers off, workers reused as a study reuses them -- in two arms:

- ``solo``: every fit is a Tune trial of its own (one report, at its end);
- ``packN``: N fits one after another in one Tune trial (one report at each fit's end: as many
  reports as ``solo``, N times fewer trials).

and bare, one after another in one process (1 thread): the floor. The arms alternate
(``--repeat``), each a fresh process in a session of its own, sampled from outside through /proc
(bench_study.Sampler): wall, efficiency = bare / (wall x 2 slots), and the cores' time over the
process's life (trial processes, driver, Ray's daemons, idle). What ``solo`` costs beyond
``packN``, over the trials it has more, is Tune's cost of a trial: its start and end in the
driver, the trial process and Ray's daemons -- what a study pays per trial before it adds its
searcher, scheduler, tracking and checkpoints (bench_harness measures those).

    python bench/bench_tune_trial.py                   # 300 fits x 20 epochs, solo and pack4, twice
    python bench/bench_tune_trial.py --quick --out f.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = {"method": "b1", "missing": 0.0, "model": {"layers": 1, "hidden": 16}, "lr_decay_epochs": [],
         "batch_size": 64}


def _bench_harness():
    """bench_harness.py as a module (bench/ holds scripts, not a package): its worker launch, the
    cores' time split and the bare loop serve this bench too."""
    spec = importlib.util.spec_from_file_location("bench_harness", HERE / "bench_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bh = _bench_harness()


def configs(n: int, epochs: int) -> list[dict]:
    """``n`` configs of one cell, learning rates drawn log-uniformly from a seeded generator."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [{**TRAIN, "epochs": epochs, "seed": i, "lr": float(10 ** rng.uniform(-4, -2))} for i in range(n)]


# ----------------------------------------------------------------------------- workers


def _trainable(config, dataset):
    from ray import tune

    from tagtune.study.fit.train import fit
    from tagtune.study.folder import train_config

    for member in config["members"]:
        logs = fit(dataset, train_config(member)).history[-1]  # the fit's last epoch
        tune.report({k: v for k, v in logs.items() if isinstance(v, int | float)})


def worker_tune(spec: dict) -> dict:
    """The fits through plain Tune, ``pack`` to a trial, 2 slots of 1 CPU."""
    import ray
    from ray import tune

    from tagtune.study.data import load

    # As a study sets them: no TensorBoard/CSV/JSON loggers; each worker preloads torch.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("RAY_preload_python_modules", "torch,tagtune.study.fit.train")
    ds, pack = load(spec["data"]), spec["pack"]
    packs = [spec["configs"][i:i + pack] for i in range(0, len(spec["configs"]), pack)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable, dataset=ds), {"cpu": 1}),
            param_space={"members": tune.grid_search(packs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=spec["storage"], name=spec["name"], verbose=0))
        grid = tuner.fit()
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"wall_s": wall, "trials": len(packs), "errors": len(grid.errors),
            "reports": sum(r.metrics.get("training_iteration", 0) for r in grid)}


# ----------------------------------------------------------------------------- driver


def launch(bs, fn: str, spec_file: Path, tmp: Path) -> tuple[dict, dict]:
    """This script as a worker (bench_harness's launch): its answer, the cores' time split."""
    answer, sampler = bh.launch(bs, [fn, str(spec_file)], tmp, script=__file__)
    return answer, bh.cpu_split(sampler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fits", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--clips", type=int, default=1060, help="training clips (valid, test: a quarter)")
    ap.add_argument("--pack", type=int, default=4, help="fits to a Tune trial in the packed arm")
    ap.add_argument("--repeat", type=int, default=2, help="times each arm runs, alternated")
    ap.add_argument("--quick", action="store_true", help="8 fits x 1 epoch, once (what the tests run)")
    ap.add_argument("--out", help="write every figure here as JSON")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        fn = {"tune": worker_tune, "loop": bh.worker_loop}[a.worker[0]]
        print(bh.ANSWER + json.dumps(fn(json.loads(Path(a.worker[1]).read_text()))))
        return
    if a.quick:
        a.fits, a.epochs, a.clips, a.repeat = 8, 1, 64, 1
    if a.fits % a.pack:
        sys.exit(f"bench_tune_trial: --fits {a.fits} is not a multiple of --pack {a.pack}")
    bs = bh._bench_study()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tune-trial-"))
    data = tmp / "data.h5"
    bs.make_data(data, (a.clips, a.clips // 4, a.clips // 4))  # bench_study's OpenMIC-shaped data
    spec = {"data": str(data), "storage": str(tmp), "configs": configs(a.fits, a.epochs)}
    print(f"{a.fits} fits x {a.epochs} epochs ({a.clips} clips, model 1 x 16, b1): solo and pack{a.pack}, "
          f"{a.repeat} time(s) each; load average {os.getloadavg()[0]:.2f}", flush=True)
    spec_file = tmp / "loop.json"
    spec_file.write_text(json.dumps(spec))
    bare = launch(bs, "loop", spec_file, tmp)[0]["bare_s"]
    print(f"  bare: {bare:.1f} s ({1000 * bare / (a.fits * a.epochs):.1f} ms an epoch)", flush=True)
    runs = []
    for i in range(a.repeat):
        for pack in (1, a.pack):
            arm = "solo" if pack == 1 else f"pack{pack}"
            spec_file = tmp / f"{arm}-{i}.json"
            spec_file.write_text(json.dumps({**spec, "pack": pack, "name": f"{arm}-{i}"}))
            r, cores = launch(bs, "tune", spec_file, tmp)
            assert r["errors"] == 0 and r["trials"] == a.fits // pack, r
            assert r["reports"] == a.fits, r  # one report a fit, in either arm
            runs.append({"arm": arm, "round": i, **r, "efficiency": bare / (2 * r["wall_s"]), "cores": cores})
            c = cores
            print(f"  {arm:>6} #{i + 1}: {r['trials']:4d} trials, wall {r['wall_s']:6.1f} s -> efficiency "
                  f"{runs[-1]['efficiency']:4.0%}; the cores ({c['process_s']:.1f} s x {c['cpus']}, "
                  f"core-s): trial processes {c['trials']:.1f}, driver {c['driver']:.1f}, "
                  f"Ray's daemons {c['ray']:.1f}, idle {c['idle']:.1f}", flush=True)
    # Tune's cost of a trial: what the solo arm spent beyond the packed one (process life x
    # CPUs), over the trials it had more; each round against its neighbour.
    per_trial = []
    for i in range(a.repeat):
        solo, packed = runs[2 * i], runs[2 * i + 1]
        extra = solo["cores"]["cpus"] * (solo["cores"]["process_s"] - packed["cores"]["process_s"])
        per_trial.append(extra / (solo["trials"] - packed["trials"]))
    print("  Tune's cost of a trial (core-s, solo's whole-process core time beyond pack's, a trial more): "
          + ", ".join(f"{x:.3f}" for x in per_trial), flush=True)
    figures = {"fits": a.fits, "epochs": a.epochs, "clips": a.clips, "pack": a.pack, "bare_s": bare,
               "runs": runs, "per_trial_core_s": per_trial}
    if a.out:
        Path(a.out).write_text(json.dumps(figures, indent=2))
    print(f"(files under {tmp})")


if __name__ == "__main__":
    sys.exit(main())
