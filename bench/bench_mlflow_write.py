"""What a study's driver spends to put its trials into MLflow: one call at a time, or a batch in one
transaction (tagtune.launch.mlflow_bulk).

The events are a study's journal events as its sender thread gets them: trials of a B1 cell on 2
slots (two trials running at once, their events interleaved), each a start (24 params, the data
file as its dataset), ``--epochs`` results of 11 metrics, an end; sent in batches of 64 events,
as ``MlflowJournalCallback`` holds them in a study. Two arms, alternated ``--repeat`` times, each
into a fresh SQLite store made as a study makes it, through ``Tracker.apply_events``:

- ``client``: MLflow's client calls one by one (what a tracking server over HTTP still gets):
  a run's creation, its params, its dataset input, a ``log_batch`` a run for the batch's results,
  its end;
- ``bulk``: the whole batch in one transaction of MLflow's own SQL store.

It prints the driver's CPU time a trial (this process's user + system time while writing: the
cores the trials train on) and the ratio, and checks that both stores hold every epoch.

    python bench/bench_mlflow_write.py                  # 300 trials x 20 epochs, each arm twice
    python bench/bench_mlflow_write.py --quick --out f.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tagtune.launch.tracking import TRIAL_TAG, Tracker, mlflow_experiment

METRICS = ("loss", "val/loss", "val/map", "val/f1", "val/bce", "lr", "seconds", "budget",
           "score", "complete", "epoch")  # 11 a B1 epoch, "epoch" last as the study writes it
PARAMS = {f"p{i}": 0.1 * i for i in range(24)}
DATASET = {"name": "openmic-2018.h5", "digest": "3f2a9c1e", "source": "/data/openmic-2018.h5"}
BATCH = 64  # events a batch (tagtune.launch.wiring: batch_events=64)


def events(trials: int, epochs: int) -> list[dict]:
    """The journal's events of ``trials`` trials, two at a time, in the order a study has them."""
    out, ts = [], 1_800_000_000_000
    for pair in range(0, trials, 2):
        ids = [f"t{t:05d}" for t in range(pair, min(pair + 2, trials))]
        for tid in ids:
            out.append({"op": "start", "trial_id": tid, "name": f"b1@0.00 #{tid}", "ts": ts,
                        "tags": {"method": "b1", "proportion": 0.0, "cell": "b1@0.00", "phase": "search"},
                        "params": PARAMS, "dataset": DATASET})
        for step in range(1, epochs + 1):
            for tid in ids:
                ts += 10
                out.append({"op": "result", "trial_id": tid, "step": step, "ts": ts,
                            "metrics": {k: 1.0 / (step + i) for i, k in enumerate(METRICS)}})
        out += [{"op": "end", "trial_id": tid, "ts": ts, "status": "FINISHED"} for tid in ids]
    return out


def arm(bulk: bool, journal: list[dict], tmp: Path, trials: int, epochs: int) -> dict:
    store = Path(tempfile.mkdtemp(dir=tmp))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    tracker = Tracker(uri, mlflow_experiment(uri, "bench", store), bulk=bulk)
    assert (tracker._store is not None) == bulk
    t0, w0 = time.process_time(), time.perf_counter()
    for i in range(0, len(journal), BATCH):
        tracker.apply_events(journal[i:i + BATCH])
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    client = tracker.client
    runs = client.search_runs([tracker.experiment_id], f"tags.`{TRIAL_TAG}` != ''", max_results=50000)
    held = sum(len(client.get_metric_history(r.info.run_id, "epoch")) for r in runs)
    assert len(runs) == trials and held == trials * epochs, (len(runs), held)
    assert all(r.info.status == "FINISHED" for r in runs)
    return {"arm": "bulk" if bulk else "client", "cpu_s": cpu, "wall_s": wall,
            "cpu_ms_a_trial": 1000 * cpu / trials, "runs": len(runs), "epochs_held": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 trials x 3 epochs, each arm once")
    ap.add_argument("--out", help="write the figures here as JSON")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.epochs, a.repeat = 8, 3, 1
    journal = events(a.trials, a.epochs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mlflow-write-"))
    arm(True, events(2, 1), tmp, 2, 1)  # MLflow's imports and first store: in neither arm
    runs = []
    for _ in range(a.repeat):
        for bulk in (False, True):
            runs.append(r := arm(bulk, journal, tmp, a.trials, a.epochs))
            print(f"{r['arm']:>6}: {a.trials} trials x {a.epochs} epochs, {len(journal)} events: "
                  f"{r['cpu_s']:.2f} s of CPU ({r['cpu_ms_a_trial']:.1f} ms a trial), "
                  f"wall {r['wall_s']:.2f} s", flush=True)
    per = {name: statistics.median(r["cpu_ms_a_trial"] for r in runs if r["arm"] == name)
           for name in ("client", "bulk")}
    ratio = per["client"] / per["bulk"]
    print(f"median CPU a trial: client {per['client']:.1f} ms, bulk {per['bulk']:.1f} ms: x{ratio:.1f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"trials": a.trials, "epochs": a.epochs, "events": len(journal),
                                           "runs": runs, "median_ms_a_trial": per, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
