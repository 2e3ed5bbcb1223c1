"""``tagtune ui STUDY_DIR``: the MLflow UI on a study's store, and Optuna's dashboard.

``start_ui(study_dir, port, optuna)`` starts ``mlflow ui`` on the study's own store (bound to
127.0.0.1) and, with ``optuna``, ``optuna-dashboard`` on the study's ``optuna.db``; it returns
once both answer, with the URLs to open. The MLflow URL is the experiment's runs table
(``/#/experiments/<id>/runs``): MLflow 3's UI otherwise opens a fresh browser on its GenAI
overview. A study tracked on an MLflow server (``--mlflow-uri http://...``) needs no local
UI: its runs-table URL on that server is given instead.

Each server runs under :mod:`tagtune.launch.ui_guard` in a session of its own: :meth:`UI.stop`
ends that whole session (the servers' workers included), and the guard ends it too when this
process dies in a way no handler sees (SIGKILL), so nothing is left running. The ``tagtune ui``
command stops them on Ctrl-C, SIGTERM, SIGHUP and on its own parent's death.

Besides the runs table, :func:`comparisons` builds the links a researcher wants first: MLflow's
compare-runs page of every cell's parent run (its best config and the replicates' test means,
side by side), and of the replicates of each proportion's winning cell.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlparse

from tagtune.study.config import ConfigError

LOG = "ui.log"  # the servers' own output, in the study directory
BIN = Path(sys.executable).parent


@dataclass
class UI:
    """Servers started for a study, and where to point a browser."""

    mlflow_url: str
    optuna_url: str | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)
    compare: list[tuple[str, str]] = field(default_factory=list)
    """(what, URL): MLflow's compare-runs pages of the study (see :func:`comparisons`)."""

    def stop(self, grace_s: float = 4.0) -> None:
        """End every process of the servers' sessions: SIGTERM (the guard ends its server, SIGKILL
        after 2 s), then SIGKILL after ``grace_s``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.processes:
                try:
                    os.killpg(proc.pid, sig)  # its session's group: the server and its workers
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            for proc in self.processes:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    pass
            if all(proc.poll() is not None for proc in self.processes):
                break
        self.processes = []

    def wait(self) -> int:
        """Until a server ends (or Ctrl-C); returns its exit code."""
        while True:
            for proc in self.processes:
                if proc.poll() is not None:
                    return proc.returncode
            time.sleep(0.5)


def check_port(port: int, flag: str = "port") -> None:
    """A ConfigError (one line) if ``port`` on 127.0.0.1 cannot be listened on, naming what
    holds it where this machine tells (Linux's /proc)."""
    with socket.socket() as s:
        # As the servers do: a port left in TIME_WAIT by a server just stopped is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            holder = port_holder(port)
            held = f" (held by {holder})" if holder else ""
            raise ConfigError(flag, f"port {port} on 127.0.0.1 is in use{held}; choose another "
                              f"with --{flag.replace('_', '-')}", where="ui") from None


def port_holder(port: int) -> str | None:
    """``pid N: command`` of the process listening on TCP ``port`` (None where it cannot be
    told: not Linux, or another user's process)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")  # 0A: LISTEN
    if not inodes:
        return None
    for pid in (e for e in os.listdir("/proc") if e.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                return f"pid {pid}: {cmd[:100]}"
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _start(cmd: list[str], ready_url: str, what: str, log: Path, timeout_s: float) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no idle job workers
    guarded = [sys.executable, "-m", "tagtune.launch.ui_guard", str(os.getpid()), "--", *cmd]
    with open(log, "a") as out:
        proc = subprocess.Popen(guarded, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not _answers(ready_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            UI("", processes=[proc]).stop()
            raise ConfigError(what, f"did not start (its output is in {log})", where="ui")
        time.sleep(0.3)
    return proc


def experiment_id(tracking_uri: str, name: str) -> str:
    """The study's MLflow experiment; a ConfigError if the store has none of that name."""
    from mlflow.tracking import MlflowClient

    from tagtune.launch.preflight import quick_mlflow_http
    from tagtune.study.errors import first_line

    try:
        with quick_mlflow_http():
            exp = MlflowClient(tracking_uri).get_experiment_by_name(name)
    except Exception as e:  # noqa: BLE001 -- any store/network failure: one line
        raise ConfigError("mlflow_uri", f"MLflow store not readable ({first_line(e)})",
                          where=tracking_uri) from None
    if exp is None:
        raise ConfigError("mlflow_uri", f"no experiment {name!r}: has the study started?",
                          where=tracking_uri)
    return exp.experiment_id


def served(tracking_uri: str) -> bool:
    """Whether the store is an MLflow server (http/https: its own UI is the place to look);
    any other store (sqlite, postgresql, a file store) is opened by a local ``mlflow ui``."""
    return urlparse(tracking_uri).scheme in ("http", "https")


def start_ui(study_dir: str | Path, port: int = 5000, optuna: bool = False,
             optuna_port: int = 8080, timeout_s: float = 120.0) -> UI:
    """Start the UIs of a study (see the module docstring); the caller stops them."""
    from tagtune.study.folder import OPTUNA_DB, load_study

    settings = load_study(study_dir)
    uri, study_dir = settings.tracking_uri, settings.study_dir
    exp = experiment_id(uri, settings.name)
    db = study_dir / OPTUNA_DB
    if optuna and not db.is_file():
        raise ConfigError("optuna", "no optuna.db yet: it is written when the search phase ends",
                          where=str(study_dir))
    local = not served(uri)
    if local:
        check_port(port)
    if optuna:
        check_port(optuna_port, "optuna_port")
    log = study_dir / LOG
    ui = UI(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs" if local
            else f"{uri.rstrip('/')}/#/experiments/{exp}/runs")
    try:
        if local:
            ui.processes.append(_start(
                [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1"],
                f"http://127.0.0.1:{port}/health", "mlflow ui", log, timeout_s))
        if optuna:
            ui.processes.append(_start(
                [str(BIN / "optuna-dashboard"), f"sqlite:///{db}", "--host", "127.0.0.1",
                 "--port", str(optuna_port)],
                f"http://127.0.0.1:{optuna_port}/api/meta", "optuna-dashboard", log, timeout_s))
            ui.optuna_url = f"http://127.0.0.1:{optuna_port}/dashboard"
        base = f"http://127.0.0.1:{port}" if local else uri.rstrip("/")
        ui.compare = comparisons(uri, exp, base)
    except BaseException:
        ui.stop()
        raise
    return ui


def compare_url(base: str, experiment: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page of ``run_ids`` (its own route: ``#/compare-runs?runs=[...]``)."""
    runs, exps = (quote(json.dumps(v, separators=(",", ":"))) for v in (run_ids, [experiment]))
    return f"{base}/#/compare-runs?runs={runs}&experiments={exps}"


def comparisons(tracking_uri: str, experiment: str, base: str) -> list[tuple[str, str]]:
    """The study's compare-runs links: every cell's parent run (best config, validation score,
    replicate test means and sd); then, once replicates have finished, the replicates of each
    proportion's winning cell by the headline metric's mean. Empty before any cell has a run."""
    from mlflow.tracking import MlflowClient

    from tagtune.launch.preflight import quick_mlflow_http
    from tagtune.launch.tracking import CELL_TAG

    with quick_mlflow_http():
        client = MlflowClient(tracking_uri)
        parents = client.search_runs([experiment], f"tags.`{CELL_TAG}` != ''", max_results=1000,
                                     order_by=["attributes.run_name ASC"])
        if not parents:
            return []
        out = [(f"each cell's best config and test means ({len(parents)} cells)",
                compare_url(base, experiment, [r.info.run_id for r in parents]))]
        metric = headline(set().union(*(r.data.metrics for r in parents)))
        if metric is None:
            return out
        winners: dict[str, tuple[float, str]] = {}  # proportion -> (mean, cell)
        for r in parents:
            value, proportion = r.data.metrics.get(metric), r.data.tags.get("proportion")
            if value is not None and (proportion not in winners or value > winners[proportion][0]):
                winners[proportion] = (value, r.data.tags[CELL_TAG])
        cells = sorted(cell for _, cell in winners.values())
        reps = [r for cell in cells for r in client.search_runs(
            [experiment], f"tags.cell = '{cell}' and tags.phase = 'replicate'", max_results=1000,
            order_by=["attributes.run_name ASC"])]
        if reps:
            out.append((f"replicates of the best cell per proportion ({', '.join(cells)}; {metric})",
                        compare_url(base, experiment, [r.info.run_id for r in reps])))
    return out


def headline(metrics: set[str]) -> str | None:
    """The headline test metric among a cell run's metric names (as ``tagtune analyze`` picks
    it: SONYC's DCASE macro AUPRC, else F1 macro; full truth first), None before replicates."""
    from tagtune.analysis.table import DCASE_HEADLINES

    return next((m for m in (*DCASE_HEADLINES, "test_full/f1_macro", "test/f1_macro")
                 if m in metrics), None)


__all__ = ["UI", "check_port", "comparisons", "compare_url", "experiment_id", "headline",
           "port_holder", "served", "start_ui"]
