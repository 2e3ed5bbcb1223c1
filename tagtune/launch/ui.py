"""``tagtune ui STUDY_DIR``: the MLflow UI on a study's store, and Optuna's dashboard.

``start_ui(study_dir, port, optuna)`` starts ``mlflow ui`` on the study's own store (bound to
127.0.0.1) and, with ``optuna``, ``optuna-dashboard`` on the study's ``optuna.db``; it returns
once both answer, with the URLs to open. The MLflow URL is the experiment's runs table
(``/#/experiments/<id>/runs``): MLflow 3's UI otherwise opens a fresh browser on its GenAI
overview. A study tracked on an MLflow server (``--mlflow-uri http://...``) needs no local
UI: its runs-table URL on that server is given instead.

Each server runs in a session of its own and :meth:`UI.stop` ends that whole session (the
servers' workers included), so nothing is left running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tagtune.study.config import ConfigError

LOG = "ui.log"  # the servers' own output, in the study directory
BIN = Path(sys.executable).parent


@dataclass
class UI:
    """Servers started for a study, and where to point a browser."""

    mlflow_url: str
    optuna_url: str | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)

    def stop(self, grace_s: float = 10.0) -> None:
        """End every process of the servers' sessions: SIGTERM, then SIGKILL after ``grace_s``."""
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
    """A ConfigError (one line) if ``port`` on 127.0.0.1 cannot be listened on."""
    with socket.socket() as s:
        # As the servers do: a port left in TIME_WAIT by a server just stopped is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ConfigError(flag, f"port {port} on 127.0.0.1 is in use; choose another with "
                              f"--{flag.replace('_', '-')}", where="ui") from None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _start(cmd: list[str], ready_url: str, what: str, log: Path, timeout_s: float) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no idle job workers
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
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

    from tagtune.launch.preflight import first_line, quick_mlflow_http

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
    from tagtune.launch.settings import load_study

    settings = load_study(study_dir)
    uri, study_dir = settings.tracking_uri, settings.study_dir
    exp = experiment_id(uri, settings.name)
    db = study_dir / "optuna.db"
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
    except BaseException:
        ui.stop()
        raise
    return ui


__all__ = ["UI", "check_port", "experiment_id", "served", "start_ui"]
