"""How many writers one MLflow tracking server holds: SQLite (1 worker) against Postgres (4).

K simulated trials log at once, each a separate process, through the study's own logging
path: ``MlflowJournalCallback`` (every event fsync'ed to the trial's journal, then sent to
MLflow with the study's fail-fast HTTP settings, MLflow left alone for 10 s after a failure)
-- a start with the params of a B1 trial, E results of the 14 metrics a real B1 trial
reports every epoch, an end. The server is ``python -m tagtune.launch.mlflow_server`` on
loopback, basic auth on, as the cluster recipe runs it: on SQLite with one worker (the
one-machine default), and on Postgres with four (a throwaway cluster, initdb/pg_ctl in a
temp dir, durable settings) where Postgres's binaries exist.

Each load is K writers at a pace: closed loop (as fast as the server answers: the server's
capacity, and what an overloaded server loses), or one result per writer every P seconds.
K = 64 at P = 1 s is 64 results a second: what a study of 64 concurrent trials with 1-s
epochs sends (through its driver, one request at a time), here from 64 processes at once,
the harder case for the server. After the writers, the journals' catch-up (the study's final
sync, per trial), then a count in the store's own tables: metric values held against
values sent, "lost N of M" (before the catch-up in brackets), and any value held twice.

Per backend and load: writes/s (log calls that reached MLflow, one per trial and epoch;
metric values/s beside), p50/p95 latency of those log calls (journal + MLflow, as the
study's driver waits for it), errors (calls of any kind that MLflow failed or timed out
on, 10 s), journal-only (results sent while MLflow was left alone after a failure).

Why forked writers: one parent imports tagtune and MLflow once, then forks K children that
share those pages; 64 fresh interpreters would need ~25 GB. On one machine the writers
and the server share the CPUs (on a cluster the trials' drivers are elsewhere): the
figures are a lower bound for the server.

    python bench/bench_tracking.py            # K:P = 1:0 64:0 64:4 64:1, 15 epochs (~17 min, 2 busy cores)
    python bench/bench_tracking.py --quick    # K:P = 1:0 64:1, 10 epochs (< 5 min)
    python bench/bench_tracking.py --loads 8:0,64:2 --epochs 20 --backends postgres
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tagtune.launch import tracking
from tagtune.launch.pg_local import LocalPostgres, free_port, postgres_bin
from tagtune.launch.preflight import psycopg_uri
from tagtune.launch.tracking import TRIAL_TAG, MlflowJournalCallback, sync

# What a B1 trial reports every epoch (a tiny study's journal), numeric_metrics' keys.
METRICS = ("budget", "complete", "epoch", "lr", "train/loss", "val/auprc_macro", "val/auprc_micro",
           "val/best_loss", "val/f1_macro", "val/loss", "val_full/auprc_macro", "val_full/auprc_micro",
           "val_full/f1_macro", "val_full/map")
# Loads as (K writers, seconds between a writer's results; 0: closed loop). K = 1 is one study:
# its trials log through its driver's callback, one request at a time.
FULL = {"loads": ((1, 0.0), (64, 0.0), (64, 4.0), (64, 1.0)), "epochs": 15}
QUICK = {"loads": ((1, 0.0), (64, 1.0)), "epochs": 10}
GOAL_K = 64


class Server:
    """The recipe's tracking server on loopback, over SQLite or a Postgres."""

    def __init__(self, root: Path, pg: LocalPostgres | None):
        self.root, self.pg = root, pg
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "tagtune.launch.mlflow_server", "--host", "127.0.0.1",
                     "--port", str(self.port), "--dir", str(root / "mlflow")]
        if pg is not None:
            secret = root / "db-password"
            secret.write_text(pg.password + "\n")
            secret.chmod(0o600)
            self.argv += ["--backend-store-uri", pg.uri, "--db-password-file", str(secret)]
        self.proc: subprocess.Popen | None = None

    @property
    def workers(self) -> int:
        from tagtune.launch.mlflow_server import POSTGRES_WORKERS

        return 1 if self.pg is None else POSTGRES_WORKERS

    def store_url(self) -> str:
        """The run store, for counting in its tables."""
        if self.pg is None:
            return f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"
        return psycopg_uri(self.pg.uri).replace("tagtune@", f"tagtune:{self.pg.password}@")

    def start(self, timeout: float = 300) -> None:
        log = self.root / "server.log"
        with open(log, "a") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tracking server failed:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, 9)  # its own session: the server and its workers
            self.proc.wait()
            self.proc = None


def writer(i: int, k: int, label: str, epochs: int, epoch_s: float, root: str, uri: str, exp: mp.Value,
           go: mp.Event, out: mp.Queue) -> None:
    """One simulated trial: start, ``epochs`` results, end -- the study's callback, timed."""
    logging.getLogger("tagtune.launch.tracking").setLevel(logging.ERROR)  # 64 x "unreachable"
    # Why MLflow failed, every time (the callback logs only every 50th): counted at the end.
    reasons: list[str] = []
    apply = tracking.Tracker.apply

    def recorded(self, event):
        try:
            apply(self, event)
        except Exception as e:
            text = str(e)
            reasons.append(text.rpartition("Caused by ")[2] if "Caused by " in text else text)
            raise

    tracking.Tracker.apply = recorded  # this child's copy of the class only
    go.wait()
    tid = f"{label}-{i:03d}"
    trial = SimpleNamespace(trial_id=tid, config={"method": "b1", "lr": 0.01, "epochs": epochs,
                                                  "missing": 0.4, "cell": "b1@0.40", "phase": "search",
                                                  "optuna_trial": i})
    study_dir = Path(root) / tid
    study_dir.mkdir(parents=True)
    cb = MlflowJournalCallback(study_dir, uri, str(exp.value), "search")
    rng = np.random.default_rng(i)
    latencies, journal_only = [], 0
    if epoch_s:  # paced: starts spread over one period, as a study's trials start one by one
        time.sleep(epoch_s * i / k)
    t0 = time.monotonic()
    cb.on_trial_start(0, [trial], trial)
    for epoch in range(1, epochs + 1):
        result = {k: float(rng.random()) for k in METRICS} | {"epoch": epoch, "training_iteration": epoch}
        skipped = time.monotonic() < cb._retry_at  # MLflow left alone after a failure: journal only
        failures = cb.failures
        t = time.perf_counter()
        cb.on_trial_result(0, [trial], trial, result)
        dt = time.perf_counter() - t
        if skipped:
            journal_only += 1
        elif cb.failures == failures:
            latencies.append(dt)
        if epoch_s:
            time.sleep(max(0.0, epoch_s - dt))
    cb.on_trial_complete(0, [trial], trial)
    out.put({"tid": tid, "latencies": latencies, "errors": cb.failures, "journal_only": journal_only,
             "reasons": reasons,
             "t0": t0, "t1": time.monotonic()})


def held(store_url: str, experiment_id: str) -> tuple[int, int, int]:
    """(runs, distinct metric values, rows) of the trials' active runs, from the store's tables."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(store_url, poolclass=sqlalchemy.pool.NullPool)
    trial_runs = ("FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid JOIN tags t ON "
                  "t.run_uuid = r.run_uuid AND t.key = :tag WHERE r.experiment_id = :e AND "
                  "r.lifecycle_stage = 'active'")
    params = {"tag": TRIAL_TAG, "e": int(experiment_id)}
    with engine.connect() as db:
        q = lambda sql: db.execute(sqlalchemy.text(sql), params).scalar()  # noqa: E731
        runs = q("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = :tag "
                 "WHERE r.experiment_id = :e AND r.lifecycle_stage = 'active'")
        distinct = q(f"SELECT count(*) FROM (SELECT m.run_uuid, m.key, m.step {trial_runs} "
                     "GROUP BY m.run_uuid, m.key, m.step) AS d")
        rows = q(f"SELECT count(*) {trial_runs}")
    engine.dispose()
    return runs, distinct, rows


def load(server: Server, k: int, epochs: int, epoch_s: float, root: Path) -> dict:
    label = f"k{k}p{epoch_s:g}"
    from mlflow.tracking import MlflowClient

    ctx = mp.get_context("fork")
    exp, go, out = ctx.Value("i", -1), ctx.Event(), ctx.Queue()
    # Forked before this process makes any HTTP call: no connection pool shared with a child.
    procs = [ctx.Process(target=writer, args=(i, k, label, epochs, epoch_s, str(root / label), server.uri,
                                              exp, go, out)) for i in range(k)]
    for p in procs:
        p.start()
    exp.value = int(MlflowClient(server.uri).create_experiment(f"bench-{label}"))
    go.set()
    stats = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    t0, t1 = min(s["t0"] for s in stats), max(s["t1"] for s in stats)
    latencies = [x for s in stats for x in s["latencies"]]
    before = held(server.store_url(), str(exp.value))
    ids = {s["tid"] for s in stats}
    for tid in sorted(ids):  # each trial's journal, as a study's final sync replays it
        sync(root / label / tid, server.uri, str(exp.value), ids)
    after = held(server.store_url(), str(exp.value))
    sent = k * epochs * len(METRICS)
    return {"k": k, "pace": epoch_s, "wall": t1 - t0, "delivered": len(latencies), "sent_calls": k * epochs,
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": float(np.percentile(latencies, 95)) if latencies else float("nan"),
            "errors": sum(s["errors"] for s in stats), "journal_only": sum(s["journal_only"] for s in stats),
            "sent": sent, "lost_before": sent - before[1], "lost": sent - after[1],
            "twice": after[2] - after[1], "runs": after[0],
            "reasons": Counter(shorten(x) for s in stats for x in s["reasons"])}


def shorten(reason: str) -> str:
    """A failure's kind: the words after "exception"/"failed", without addresses and run ids."""
    import re

    reason = re.sub(r"https?://\S+|[0-9a-f]{32}|port=\d+|object at 0x[0-9a-f]+", "", reason)
    return " ".join(reason.split())[:120]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="loads 1:0,64:1, 10 epochs (< 5 min)")
    ap.add_argument("--loads", help="comma-separated K:P, K writers each sending a result every P "
                    "seconds (0: as fast as the server answers); default 1:0,64:0,64:4,64:1")
    ap.add_argument("--epochs", type=int, help="results per trial (default 15)")
    ap.add_argument("--backends", default="sqlite,postgres")
    a = ap.parse_args()
    preset = QUICK if a.quick else FULL
    loads = (tuple((int(k), float(p)) for k, p in (x.split(":") for x in a.loads.split(",")))
             if a.loads else preset["loads"])
    epochs = a.epochs or preset["epochs"]
    # The server's admin = the writers' login (MLflow's own variables, inherited by the forks).
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=secrets.token_hex(12),
                      MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")  # no "View run" line per run
    import mlflow

    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}: {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, MLflow {mlflow.__version__}, "
          f"{len(METRICS)} metrics per result, {epochs} results per trial")
    rows = []
    for backend in a.backends.split(","):
        if backend == "postgres" and postgres_bin() is None:
            print("postgres: skipped (no initdb; Debian: apt-get install postgresql)")
            continue
        root = Path(tempfile.mkdtemp(prefix=f"tt-bt-{backend}-"))
        pg = LocalPostgres().start() if backend == "postgres" else None
        server = Server(root, pg)
        try:
            t = time.monotonic()
            server.start()
            print(f"{backend}: server up in {time.monotonic() - t:.0f} s ({server.workers} workers)",
                  flush=True)
            for k, pace in loads:
                r = load(server, k, epochs, pace, root)
                rows.append((backend, server.workers, r))
                print(f"  K={k}, P={pace:g} s: done in {r['wall']:.0f} s", flush=True)
        finally:
            server.stop()
            if pg is not None:
                pg.stop()
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'backend':>8} {'workers':>7} {'K':>3} {'P s':>3} {'writes/s':>8} {'values/s':>8} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'errors':>6} {'jrnl-only':>9}  lost N of M (before catch-up)  twice")
    for backend, workers, r in rows:
        print(f"{backend:>8} {workers:>7} {r['k']:>3} {r['pace']:>3g} {r['delivered'] / r['wall']:>8.1f} "
              f"{r['delivered'] * len(METRICS) / r['wall']:>8.0f} {r['p50'] * 1e3:>7.1f} "
              f"{r['p95'] * 1e3:>7.1f} {r['errors']:>6} {r['journal_only']:>9}  "
              f"lost {r['lost']} of {r['sent']} ({r['lost_before']}){'':>8} {r['twice']:>5}"
              + ("" if r["runs"] == r["k"] else f"  RUNS {r['runs']} of {r['k']}"))
    for backend, _, r in rows:
        for reason, n in r["reasons"].most_common(3):
            print(f"{backend}, K = {r['k']}, P = {r['pace']:g} s: {n} x {reason}")
    for backend, _, r in rows:
        if r["k"] >= GOAL_K:  # the goal: 64 writers held, nothing lost
            kept = r["lost"] == 0 and r["twice"] == 0 and r["runs"] == r["k"]
            held = "held" if r["errors"] == 0 else f"overloaded ({r['errors']} failed calls)"
            print(f"{backend}, K = {r['k']}, P = {r['pace']:g} s: {held}, "
                  f"{'nothing lost' if kept else 'LOST OR DOUBLED VALUES'}")


if __name__ == "__main__":
    main()
