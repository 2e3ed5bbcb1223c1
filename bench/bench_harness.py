"""What the study's machinery costs around fast epochs: a real study against the bare ``fit``.

A study on tiny real data goes through the whole real path (Ray Tune, one Optuna study and one
ASHA per cell, checkpoints, Tune's snapshots, the journal, MLflow) -- one cell ``b1@0.00``, ASHA
off (grace period = epochs), no replicates -- and the same configs, read back from the study,
are fitted one after another in a plain process (1 thread): the bare cost. Every study runs in a
fresh process in a session of its own, sampled from outside through /proc (bench_study.Sampler).

Figures (the same machine state for every figure of one invocation):

- fixed cost: a study of 1 trial x 1 epoch, as ``tagtune study --config`` runs it, the whole
  process timed from outside (imports, Ray's start and end, the plan line, the interpreter's
  exit); and the same study's ``run_study`` alone (ray.init included), the figure the others use;
- per trial: (wall x slots - bare) / trials, the machinery's cost of one trial, fixed cost in;
  per trial-epoch: the same over every epoch the trials trained;
- harness efficiency = bare epoch-seconds / (wall x trial slots);
- mean concurrency = sum of the trials' spans / the study's span (from mlflow-journal.jsonl);
- the driver's share of the CPU: the study process's CPU seconds / every process's of its run;
- the cores' time over the study process's life, split: the trial processes, a fused study's
  stacks, the driver, Ray's daemons, idle (``cores``): where the time beyond bare went;
- ``--sizes 100,2000``: the per-trial cost at each number of trials (nothing should grow with it);
- ``--fuse 16``: the main study again with fused trials (stacks of 16); its bare cost twice: the
  configs' solo fits (``efficiency``, against what the same configs cost as separate trials) and
  the same configs in stacks of 16 (``fit_many``: ``stack_efficiency``, the machinery's own
  overhead around its stacks; a stack runs the generic torch path, which on a CPU is ~0.35x the
  CPU path's speed per core: bench_fused).

Checked on every study (the bench fails otherwise, whatever the timings): every trial ran its
epochs, and every epoch's metrics reached MLflow exactly once.

    python bench/bench_harness.py                       # 60 trials x 40 epochs, then 1 x 1
    python bench/bench_harness.py --fuse 16 --sizes 100,400
    python bench/bench_harness.py --quick --out f.json  # seconds: what `make test` runs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELL = ("b1", 0.0)
ANSWER = "bench_harness answer: "
TRAIN = {"model": {"layers": 1, "hidden": 16}, "lr_decay_epochs": [], "batch_size": 64}


def _bench_study():
    """bench_study.py as a module (bench/ holds scripts, not a package): its Sampler and launch."""
    spec = importlib.util.spec_from_file_location("bench_study", HERE / "bench_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- workers


def worker_study(spec: dict) -> dict:
    """One study in this process; what its files say about it."""
    from tagtune.launch.study import run_study
    from tagtune.study.folder import StudySettings

    t0 = time.perf_counter()  # Ray started by the study itself, as `tagtune study` does
    result = run_study(StudySettings(**spec), verbose=0)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, **study_files(result.study_dir, result.tracking_uri, result.experiment_id)}


def worker_inspect(spec: dict) -> dict:
    """What the files of a study that ran elsewhere (a ``tagtune study`` process) say about it."""
    from tagtune.study.folder import SUMMARY, load_study

    settings = load_study(spec["study_dir"])
    summary = json.loads((settings.study_dir / SUMMARY).read_text())
    return study_files(settings.study_dir, settings.tracking_uri, summary["experiment_id"])


def study_files(study_dir: Path, tracking_uri: str, experiment_id: str) -> dict:
    """A study's trial configs, the trials' busy time and span (from the journal), each trial's
    epochs in MLflow, Tune's snapshot warnings."""
    from tagtune.study.folder import JOURNAL, SEARCH

    configs = []
    for trial_dir in sorted((study_dir / SEARCH).iterdir()):
        if (trial_dir / "params.json").is_file():
            configs.append(json.loads((trial_dir / "params.json").read_text()))
    events = [json.loads(line) for line in (study_dir / JOURNAL).read_text().splitlines()]
    spans: dict[str, list[int]] = {}
    for e in events:
        if e.get("op") in ("start", "end") and "trial_id" in e:
            spans.setdefault(e["trial_id"], []).append(e["ts"])
    busy = sum(max(ts) - min(ts) for ts in spans.values()) / 1000
    span = (max(max(ts) for ts in spans.values()) - min(min(ts) for ts in spans.values())) / 1000
    return {"configs": configs, "busy_s": busy, "span_s": span,
            "mlflow": mlflow_epochs(tracking_uri, experiment_id), "warnings": snapshot_warnings(study_dir)}


def mlflow_epochs(tracking_uri: str, experiment_id: str) -> dict[str, list[float]]:
    """Per trial, the ``epoch`` values its MLflow run holds, in step order (one per logged epoch)."""
    from mlflow.tracking import MlflowClient

    from tagtune.launch.tracking import TRIAL_TAG

    client = MlflowClient(tracking_uri)
    out = {}
    for run in client.search_runs([experiment_id], f"tags.`{TRIAL_TAG}` != ''", max_results=50000):
        history = client.get_metric_history(run.info.run_id, "epoch")
        out[run.data.tags[TRIAL_TAG]] = [m.value for m in sorted(history, key=lambda m: m.step)]
    return out


def snapshot_warnings(study_dir: Path) -> int:
    """How often Tune warned that its experiment snapshots may become a bottleneck."""
    log = study_dir / "study.log"
    return log.read_text(errors="replace").count("snapshotting has been triggered") if log.exists() else 0


def worker_loop(spec: dict) -> dict:
    """The bare cost: each config's ``fit`` one after another, 1 thread; with ``fuse`` N, the
    configs in stacks of N (``fit_many``, the arithmetic a fused study's stacks do), one stack
    after another."""
    import torch

    from tagtune.study.data import load
    from tagtune.study.fit.stacked import fit_many
    from tagtune.study.fit.train import fit
    from tagtune.study.folder import train_config

    torch.set_num_threads(1)
    ds = load(spec["data"])
    configs, n = [train_config(c) for c in spec["configs"]], spec.get("fuse", 1)
    t0 = time.perf_counter()
    if n > 1:
        for i in range(0, len(configs), n):
            fit_many(ds, configs[i:i + n])
    else:
        for cfg in configs:
            fit(ds, cfg)
    return {"bare_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- driver


def worker_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def launch(bs, args: list[str], tmp: Path, script: str = __file__):
    """``script`` (this one, or another bench's that answers the same way) as a worker in a new
    session, sampled from outside: (answer, sampler)."""
    env = worker_env()
    with open(tmp / "worker.log", "a") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, script, "--worker", *args], env=env,
                                stdout=subprocess.PIPE, stderr=err, start_new_session=True, text=True)
        sampler = bs.Sampler(proc.pid, mem_every=None)  # CPU only: smaps reads would take a core's share
        sampler.start()
        out, _ = proc.communicate()
        sampler.seconds = time.perf_counter() - t0  # the process's whole life, imports and exit in
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"bench_harness: worker {args[0]} failed; see {tmp / 'worker.log'}")
    # The libraries may print too (a fused study's stacks): the answer is the marked line.
    answer = [line for line in out.splitlines() if line.startswith(ANSWER)][-1]
    return json.loads(answer[len(ANSWER):]), sampler



_RAN: dict[tuple[int, int, int], dict] = {}


def study(bs, tmp: Path, base: dict, name: str, trials: int, epochs: int, fuse: int = 1) -> dict:
    """One study (worker process) and the bare loop over its configs: its figures (a study of the
    same size already run in this invocation is not run again)."""
    if (trials, epochs, fuse) in _RAN:
        return {**_RAN[trials, epochs, fuse], "name": name}
    spec = {**base, "name": name, "trials": trials, "epochs": epochs, "grace_period": epochs,
            "fuse": fuse}
    r, sampler = launch(bs, ["study", json.dumps(spec)], tmp)
    # The configs in a file: a thousand of them are more than one argument may hold (128 KiB).
    spec_file = tmp / f"{name}-configs.json"
    spec_file.write_text(json.dumps({"data": base["data"], "configs": r["configs"]}))
    bare = launch(bs, ["loop", f"@{spec_file}"], tmp)[0]
    if fuse > 1:  # what the same configs cost as the stacks they run in, bare
        spec_file.write_text(json.dumps({"data": base["data"], "configs": r["configs"], "fuse": fuse}))
        stacks_s = launch(bs, ["loop", f"@{spec_file}"], tmp)[0]["bare_s"]
    # The study's own checks: all its trials ran their epochs, each epoch in MLflow once.
    assert len(r["configs"]) == trials, (name, len(r["configs"]), trials)
    assert len(r["mlflow"]) == trials, (name, sorted(r["mlflow"]))
    for tid, seen in r["mlflow"].items():
        assert seen == [float(e) for e in range(1, epochs + 1)], (name, tid, seen)
    slots = base["num_cpus"] // base["cpus_per_trial"]
    wall, bare_s = r["wall_s"], bare["bare_s"]
    cpu = sum(sampler.cpu.values())
    driver = sum(v for (pid, _), v in sampler.cpu.items() if pid == sampler.sid)
    cores = cpu_split(sampler)
    _RAN[trials, epochs, fuse] = {
            "name": name, "trials": trials, "epochs": epochs, "fuse": fuse, "slots": slots,
            "wall_s": wall, "bare_s": bare_s, "efficiency": bare_s / (wall * slots),
            "bare_epoch_ms": 1000 * bare_s / (trials * epochs),
            "per_trial_s": (wall * slots - bare_s) / trials,
            "per_trial_epoch_ms": 1000 * (wall * slots - bare_s) / (trials * epochs),
            "concurrency": r["busy_s"] / r["span_s"] if r["span_s"] > 0 else 0.0,
            "driver_cpu_share": driver / cpu if cpu else 0.0,
            "cores": cores, "snapshot_warnings": r["warnings"]}
    if fuse > 1:
        _RAN[trials, epochs, fuse].update(bare_stacks_s=stacks_s,
                                          stack_efficiency=stacks_s / (wall * slots))
    return _RAN[trials, epochs, fuse]


def cpu_split(sampler) -> dict:
    """Where the cores' time went over a study process's life (core-seconds): its trial
    processes (Tune's trial actors: a solo trial's fit, a fused member waiting on its stack),
    a fused study's stacks, the driver (the study's own process), the rest (Ray's daemons and
    agents, idle workers, the stacks' registry), and the cores left idle (the process's wall x
    the CPUs it could use, minus all of these)."""
    split = dict.fromkeys(("trials", "stacks", "driver", "ray"), 0.0)
    for key, seconds in sampler.cpu.items():
        name = sampler.names.get(key, "")
        kind = ("driver" if key[0] == sampler.sid else "trials" if name.startswith("ray::ImplicitFunc")
                else "stacks" if name.startswith("ray::StackActor") else "ray")
        split[kind] += seconds
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {**split, "idle": sampler.seconds * cpus - sum(split.values()), "process_s": sampler.seconds,
            "cpus": cpus}


def whole_process(bs, tmp: Path, base: dict, name: str) -> dict:
    """A study of 1 trial x 1 epoch as a user starts it, ``tagtune study --config`` (the plan
    line and the display included), in a process of its own timed from outside: its seconds,
    checked like every study (the trial ran its epoch, in MLflow once)."""
    from tagtune.study.folder import StudySettings

    settings = StudySettings(**{**base, "name": name, "trials": 1, "epochs": 1, "grace_period": 1})
    config = tmp / f"{name}.yaml"
    config.write_text(settings.to_yaml())
    with open(tmp / "worker.log", "a") as log:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tagtune", "study", "--config", str(config)],
                              env=worker_env(), stdout=log, stderr=log, start_new_session=True)
        seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"bench_harness: `tagtune study` failed; see {tmp / 'worker.log'}")
    r = launch(bs, ["inspect", json.dumps({"study_dir": str(settings.study_dir)})], tmp)[0]
    assert len(r["configs"]) == 1 and list(r["mlflow"].values()) == [[1.0]], (name, r["mlflow"])
    return {"process_s": seconds}


def show(f: dict) -> None:
    print(f"  {f['name']:>12}: {f['trials']:4d} trials x {f['epochs']:3d} epochs, fuse {f['fuse']:2d}: "
          f"wall {f['wall_s']:6.1f} s, bare {f['bare_s']:6.1f} s ({f['bare_epoch_ms']:.1f} ms an epoch) "
          f"-> efficiency {f['efficiency']:4.0%}; "
          f"per trial {f['per_trial_s']:5.2f} s, per trial-epoch {f['per_trial_epoch_ms']:5.1f} ms; "
          f"concurrency {f['concurrency']:.2f} of {f['slots']}; driver {f['driver_cpu_share']:.0%} "
          f"of the CPU; Tune's snapshot warnings {f['snapshot_warnings']}", flush=True)
    c = f["cores"]
    stacks = f", stacks {c['stacks']:.1f}" if f["fuse"] > 1 else ""
    print(f"  {'':>12}  the cores ({c['process_s']:.1f} s x {c['cpus']} CPUs, core-s): trial processes "
          f"{c['trials']:.1f}{stacks}, driver {c['driver']:.1f}, Ray's daemons {c['ray']:.1f}, "
          f"idle {c['idle']:.1f}", flush=True)
    if "bare_stacks_s" in f:
        print(f"  {'':>12}  the same configs bare in stacks of {f['fuse']} (fit_many): "
              f"{f['bare_stacks_s']:6.1f} s -> harness efficiency {f['stack_efficiency']:4.0%} "
              f"around its stacks", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few small studies (what make test runs)")
    ap.add_argument("--trials", type=int, default=60, help="trials of the main study")
    ap.add_argument("--epochs", type=int, default=40, help="epochs per trial of the main study")
    ap.add_argument("--clips", type=int, default=256, help="training clips (valid, test: a quarter)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the study's Ray (1 per trial)")
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--checkpoint-s", type=float, default=None,
                    help="a trial's checkpoints at least this far apart (default: the study's)")
    ap.add_argument("--sizes", default="", help="numbers of trials for the per-trial sweep, e.g. 100,2000")
    ap.add_argument("--sweep-epochs", type=int, default=20, help="epochs per trial in the sweep")
    ap.add_argument("--fuse", type=int, default=1, help="also run the main study fused (stack size)")
    ap.add_argument("--out", help="write every figure here as JSON")
    ap.add_argument("--sections", default="fmus",
                    help="f: fixed cost, m: main study, u: fused (with --fuse), s: size sweep")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        fn = {"study": worker_study, "loop": worker_loop, "inspect": worker_inspect}[a.worker[0]]
        arg = a.worker[1]
        spec = json.loads(Path(arg[1:]).read_text() if arg.startswith("@") else arg)
        print(ANSWER + json.dumps(fn(spec)))
        return
    if a.quick:
        # Sized so that the sweep's studies are the fixed and the main one, run once each.
        a.trials, a.epochs, a.clips, a.sizes, a.sweep_epochs = 4, 1, 64, "1,4", 1
        a.fuse = a.fuse if a.fuse > 1 else 2
    bs = _bench_study()
    tmp = Path(tempfile.mkdtemp(prefix="bench-harness-"))
    data = tmp / "harness.h5"
    bs.make_data(data, (a.clips, a.clips // 4, a.clips // 4))  # bench_study's OpenMIC-shaped data
    base = {"data": str(data), "storage": str(tmp), "methods": (CELL[0],), "missing": (CELL[1],),
            "replicates": 0, "checkpoint_every": a.checkpoint_every, "train": TRAIN,
            **({} if a.checkpoint_s is None else {"checkpoint_s": a.checkpoint_s}),
            "num_cpus": a.cpus, "cpus_per_trial": 1}
    print(f"data: {a.clips} clips of 10 x 128, model 1 x 16, cell {CELL[0]}@{CELL[1]:.2f}, ASHA off; "
          f"{a.cpus} slots; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    figures: dict = {"cpus": a.cpus, "clips": a.clips}
    if "f" in a.sections:
        figures["fixed"] = {**study(bs, tmp, base, "fixed", 1, 1),
                            **whole_process(bs, tmp, base, "fixed-cli")}
        print(f"fixed cost (1 trial x 1 epoch): {figures['fixed']['process_s']:.1f} s the whole "
              f"`tagtune study` process, {figures['fixed']['wall_s']:.1f} s its run_study alone "
              f"(its bare fit {figures['fixed']['bare_s']:.2f} s)")
    if "m" in a.sections:
        figures["main"] = study(bs, tmp, base, "main", a.trials, a.epochs)
        show(figures["main"])
    if a.fuse > 1 and "u" in a.sections:
        figures["fused"] = study(bs, tmp, base, f"fuse{a.fuse}", a.trials, a.epochs, fuse=a.fuse)
        show(figures["fused"])
    sizes = [int(s) for s in a.sizes.split(",") if s] if "s" in a.sections else []
    figures["sizes"] = [study(bs, tmp, base, f"n{n}", n, a.sweep_epochs) for n in sizes]
    for f in figures["sizes"]:
        show(f)
    if len(sizes) > 1:
        first, last = figures["sizes"][0], figures["sizes"][-1]
        figures["growth"] = last["per_trial_s"] / first["per_trial_s"]
        print(f"per-trial cost, {last['trials']} trials against {first['trials']}: "
              f"x{figures['growth']:.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(figures, indent=2))
    print(f"(files under {tmp})")


if __name__ == "__main__":
    sys.exit(main())
