"""What the study layer costs: `tagtune study` against a plain loop over ``fit``, on one run.

Sections (every figure of one invocation comes from the same machine state; each run is a
fresh process in a session of its own, sampled from outside every 0.2 s through /proc):

(a) overhead: N and 2N trial configs (B1 and MT, ASHA off: grace period = epochs, no
    replicates) through ``run_study`` (Ray Tune + Optuna + MLflow, a local Ray of 1 CPU),
    and the same configs, read back from the studies, in a sequential loop over
    ``tagtune.study.fit.train.fit`` (1 thread). Overhead = (study wall x CPUs) / (loop wall x 1)
    - 1, split into one-time costs (Ray, the MLflow store, the trial worker's imports, the
    Optuna export and the final MLflow sync) and the steady state: the trials' span, from
    the driver's journal clock, against the loop. CPU utilisation = CPU seconds of every
    process of the run / (wall x CPUs).
(b) LE's shared teacher: K LE trials of one cell (one key: same data, proportion, seed),
    ``share_le_teacher`` on and off: how many stage-1 trainings ran, epochs trained, wall
    and CPU time.
(c) memory: peak RSS of each trial worker, split into private (USS) and shared pages, on
    OpenMIC-size data (12,678 / 2,237 / 5,085 clips of 10 x 128): the dataset sits once in
    the node's object store and every worker maps it read-only (zero-copy numpy); the plain
    loop process, which loaded the file itself, holds it privately.
(d) scaling: the 2N-trial study of (a) with 2 concurrent trials (2 CPUs): speed-up over 1.

    python bench/bench_study.py            # OpenMIC-size data (~7 min on 2 cores)
    python bench/bench_study.py --quick    # 2,000 clips, fewer epochs (~2 min)
    python bench/bench_study.py --sections b   # only LE's shared teacher
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
FULL = {"n": (12_678, 2_237, 5_085), "epochs": 4, "trials": 3, "le_trials": 4}
QUICK = {"n": (2_000, 400, 400), "epochs": 3, "trials": 2, "le_trials": 4}


class Sampler(threading.Thread):
    """CPU seconds and peak memory of every process of one session, from /proc: CPU every 0.2 s,
    memory every ``mem_every``-th time (a process's smaps costs the reader milliseconds: read
    every 0.2 s for every process of a study, it took ~40% of a core, 2026-12-07); None: never.
    ``own_cpu``: the sampling thread's CPU seconds, for a sampler in the process it measures."""

    def __init__(self, sid: int, mem_every: int | None = 10):
        super().__init__(daemon=True)
        self.sid, self.stop, self.mem_every = sid, threading.Event(), mem_every
        self.cpu: dict[tuple[int, str], float] = {}
        self.mem: dict[tuple[int, str], dict[str, float]] = {}
        self.names: dict[tuple[int, str], str] = {}
        self.own_cpu = 0.0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.sample(memory=bool(self.mem_every) and i % self.mem_every == 0)
            i += 1
            time.sleep(0.2)
        self.own_cpu = time.thread_time()

    def sample(self, memory: bool = True) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                if os.getsid(pid) != self.sid:
                    continue
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                key = (pid, fields[19])  # (pid, start time): a reused pid is another process
                smaps = Path(f"/proc/{pid}/smaps").read_text() if memory else ""
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue
            self.cpu[key] = max(self.cpu.get(key, 0.0), (int(fields[11]) + int(fields[12])) / TICK)
            now = dict.fromkeys(("rss", "private", "shared", "object_store"), 0.0)
            in_store = False
            for line in smaps.splitlines():
                head, _, rest = line.partition(" ")
                if "-" in head and not head.endswith(":"):  # a mapping: "lo-hi perms ... path"
                    in_store = "/dev/shm/plasma" in line  # Ray's object store, mmapped
                    continue
                if head not in ("Rss:", "Private_Clean:", "Private_Dirty:", "Shared_Clean:",
                                "Shared_Dirty:"):
                    continue
                kb = int(rest.split()[0]) / 1024
                if head == "Rss:":
                    now["rss"] += kb
                    now["object_store"] += kb if in_store else 0.0
                elif head in ("Private_Clean:", "Private_Dirty:"):
                    now["private"] += kb
                elif head in ("Shared_Clean:", "Shared_Dirty:"):
                    now["shared"] += kb
            peak = self.mem.setdefault(key, dict.fromkeys(now, 0.0))
            if now["rss"] > peak["rss"]:
                peak.update(now)
            if cmd.strip():  # a dying process reads as "": keep what it was
                self.names[key] = cmd[:80]


def launch(args: list[str], tmp: Path) -> tuple[dict, Sampler, float]:
    """Run this script as a worker in a new session; its JSON answer, sampler, wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", *args], env=env,
                            stdout=subprocess.PIPE, stderr=open(tmp / "worker.log", "a"),
                            start_new_session=True, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"worker {args[0]} failed; see {tmp / 'worker.log'}")
    return json.loads(out.strip().splitlines()[-1]), sampler, wall


# ----------------------------------------------------------------------------- workers


def worker_study(spec: dict) -> dict:
    import ray

    from tagtune.launch.study import run_study
    from tagtune.study.fit.teachers import TeacherCache
    from tagtune.study.folder import JOURNAL, SEARCH, TEACHERS, StudySettings

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=spec.pop("num_cpus"), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    t1 = time.perf_counter()
    result = run_study(StudySettings(**spec), verbose=0)
    t2 = time.perf_counter()
    configs, teacher_stages, epochs, first = [], 0, 0, {}
    for trial_dir in sorted((result.study_dir / SEARCH).iterdir()):
        lines = (trial_dir / "result.json").read_text().splitlines() if trial_dir.is_dir() else []
        if lines:
            rows = [json.loads(line) for line in lines]
            configs.append(rows[0]["config"])
            teacher_stages += any(r.get("stage") == "teacher" for r in rows)
            epochs += len(rows)
            first[rows[0]["trial_id"]] = [r["time_this_iter_s"] for r in rows[:2]]
    # The trials' span, from the driver's own millisecond clock (the tracking journal).
    events = [json.loads(line) for line in (result.study_dir / JOURNAL).read_text().splitlines()]
    starts = [e for e in events if e["op"] == "start"]
    span = (max(e["ts"] for e in events if e["op"] == "end") - starts[0]["ts"]) / 1000
    times = first[starts[0]["trial_id"]]  # the first trial pays the worker's imports
    cache = TeacherCache(result.study_dir / TEACHERS)
    shared = cache.trainings()
    for t in shared:
        epochs += json.loads((cache.root / t["key"] / "meta.json").read_text())["epochs"]
    return {"ray_init_s": t1 - t0, "study_s": t2 - t1, "span_s": span,
            "worker_setup_s": max(times[0] - times[-1], 0.0), "configs": configs,
            "teacher_stages_in_trials": teacher_stages, "shared_trainings": shared,
            "epochs_trained": epochs}


def worker_loop(spec: dict) -> dict:
    import torch

    from tagtune.study.data import load
    from tagtune.study.fit.train import fit
    from tagtune.study.folder import train_config

    torch.set_num_threads(1)
    ds = load(spec["data"])
    seconds = []
    for config in spec["configs"]:
        t0 = time.perf_counter()
        fit(ds, train_config(config))
        seconds.append(time.perf_counter() - t0)
    return {"seconds": seconds}


# ----------------------------------------------------------------------------- figures


def make_data(path: Path, n: tuple[int, int, int]) -> float:
    """OpenMIC-shaped random data (10 x 128 frames, 20 classes, ~10% observed); X in MB."""
    import numpy as np

    from tagtune.study.data import Dataset, Split, save

    rng = np.random.default_rng(0)

    def split(k: int, prefix: str) -> Split:
        M = rng.random((k, 20)) < 0.1
        Y = ((rng.random((k, 20)) < 0.3) & M).astype(np.float32)
        return Split(rng.normal(size=(k, 10, 128)).astype(np.float32), Y, M,
                     np.array([f"{prefix}{i}" for i in range(k)]))

    ds = Dataset(train=split(n[0], "tr"), valid=split(n[1], "va"), test=split(n[2], "te"),
                 classes=tuple(f"c{i}" for i in range(20)), name="bench")
    save(ds, path)
    return sum(s.X.nbytes for s in ds.splits.values()) / 2**20


def is_trial_worker(cmdline: str) -> bool:
    """Whether a process (by its command line) is a Ray worker: what runs trials, not Ray's daemons."""
    return "default_worker.py" in cmdline or cmdline.startswith("ray::")


def trial_workers(s: Sampler) -> list[dict[str, float]]:
    """Peak memory of the processes that ran trials (Ray workers that loaded torch)."""
    rows = [m for k, m in s.mem.items() if is_trial_worker(s.names.get(k, ""))]
    return sorted(rows, key=lambda m: -m["rss"])[:2]


def overhead_memory_scaling(base: dict, size: dict, data: Path, x_mb: float, tmp: Path) -> None:
    def key(config: dict) -> str:
        return json.dumps(config, sort_keys=True)

    runs = {}  # (CPUs, trials per cell) -> (answer, sampler, wall)
    for cpus, trials in ((1, size["trials"]), (1, 2 * size["trials"]), (2, 2 * size["trials"])):
        spec = {**base, "name": f"ab{cpus}x{trials}", "methods": ("b1", "mt"), "trials": trials,
                "num_cpus": cpus}
        runs[cpus, trials] = launch(["study", json.dumps(spec)], tmp)
    big = (1, 2 * size["trials"])
    configs = sorted({key(c): c for r in runs.values() for c in r[0]["configs"]}.items())
    loop, loop_s, loop_wall = launch(["loop", json.dumps(
        {"data": str(data), "configs": [c for _, c in configs]})], tmp)
    fit_s = dict(zip([k for k, _ in configs], loop["seconds"], strict=True))

    def L(run) -> float:  # the plain loop's seconds for the configs a study ran
        return sum(fit_s[key(c)] for c in runs[run][0]["configs"])

    def S(run) -> float:
        return runs[run][0]["study_s"]

    print(f"\n(a) overhead: trials of b1 and mt, ASHA off; the plain loop fits each config in one "
          f"process, 1 thread ({loop_wall:.1f} s end to end for all {len(configs)} configs, "
          f"CPU {sum(loop_s.cpu.values()) / loop_wall:.0%})")
    for run, (r, smp, wall) in runs.items():
        cpus, n = run[0], len(r["configs"])
        fixed = r["ray_init_s"] + r["study_s"] - r["span_s"] + r["worker_setup_s"]
        steady = (r["span_s"] - r["worker_setup_s"]) * cpus / L(run) - 1
        print(f"  study {n:2d} trials, {cpus} CPU: {S(run):6.1f} s in process (+ ray.init "
              f"{r['ray_init_s']:.1f} s; {wall:5.1f} s end to end), loop {L(run):6.1f} s: "
              f"overhead x CPUs {S(run) * cpus / L(run) - 1:+.0%}; CPU utilisation "
              f"{sum(smp.cpu.values()) / (wall * cpus):.0%}")
        print(f"      one-time {fixed:4.1f} s (Ray, MLflow store, first worker's imports "
              f"{r['worker_setup_s']:.1f} s, export, sync); per trial, steady state: {steady:+.1%}")
    two = (2, 2 * size["trials"])
    print(f"\n(d) scaling, {len(runs[big][0]['configs'])} trials: 1 -> 2 concurrent: speed-up "
          f"{S(big) / S(two):.2f} in process, {runs[big][2] / runs[two][2]:.2f} end to end")

    print(f"\n(c) memory per trial worker (peak RSS = private + shared), X = {x_mb:.0f} MB")
    for r in trial_workers(runs[two][1]):
        print(f"  Ray trial worker:   RSS {r['rss']:6.0f} MB = private {r['private']:6.0f} + "
              f"shared {r['shared']:6.0f} (object store pages {r['object_store']:4.0f})")
    lp = max(loop_s.mem.values(), key=lambda m: m["rss"])
    print(f"  plain loop process: RSS {lp['rss']:6.0f} MB = private {lp['private']:6.0f} + "
          f"shared {lp['shared']:6.0f} (it loaded the file itself)")



def shared_teacher(base: dict, size: dict, tmp: Path) -> None:
    print(f"\n(b) LE, {size['le_trials']} trials of one cell (le@0.40), 2 CPUs")
    for share in (False, True):
        spec = {**base, "name": f"le{int(share)}", "methods": ("le",), "trials": size["le_trials"],
                "num_cpus": 2, "share_le_teacher": share}
        r, smp, wall = launch(["study", json.dumps(spec)], tmp)
        keys = {t["key"] for t in r["shared_trainings"]}
        runs_of_stage1 = r["teacher_stages_in_trials"] + len(r["shared_trainings"])
        print(f"  share_le_teacher={share!s:5}: stage 1 ran {runs_of_stage1} time(s) for "
              f"{len(keys) or 1} key(s); {r['epochs_trained']} epochs trained; study "
              f"{r['study_s']:.1f} s, end to end {wall:.1f} s, CPU {sum(smp.cpu.values()):.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data, fewer epochs")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per trial (longer trials amortise the study's one-time costs)")
    ap.add_argument("--sections", default="ab",
                    help="a: overhead, memory, scaling (a, c, d); b: LE's shared teacher")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        fn = {"study": worker_study, "loop": worker_loop}[a.worker[0]]
        print(json.dumps(fn(json.loads(a.worker[1]))))
        return

    size = QUICK if a.quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    data = tmp / "bench.h5"
    x_mb = make_data(data, size["n"])
    E = a.epochs or size["epochs"]
    base = {"data": str(data), "storage": str(tmp), "missing": (0.4,), "epochs": E, "grace_period": E,
            "replicates": 0, "checkpoint_every": E, "train": {"lr_decay_epochs": []}}
    print(f"data: {size['n']} clips of 10 x 128 (X {x_mb:.0f} MB); epochs {E}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    if "a" in a.sections:
        overhead_memory_scaling(base, size, data, x_mb, tmp)
    if "b" in a.sections:
        shared_teacher(base, size, tmp)
    print(f"\n(files under {tmp})")


if __name__ == "__main__":
    main()
