"""``tagtune ui STUDY_DIR``: the MLflow UI on a study's store, and Optuna's dashboard.

``start_ui(study_dir, port, optuna)`` starts ``mlflow ui`` on the study's own store (bound to
127.0.0.1) and, with ``optuna``, ``optuna-dashboard`` on the study's exported Optuna studies; it returns
once both answer, with the URLs to open. The MLflow URL is the experiment's runs page on the
cells' table (see :func:`comparisons`; before any cell has a run, the plain runs table). A
study tracked on an MLflow server (``--mlflow-uri http://...``) needs no local UI: the URLs on
that server are given instead.

Each server runs under :mod:`tagtune.launch.ui_guard` in a session of its own: :meth:`UI.stop`
ends that whole session (the servers' workers included), and the guard ends it too when this
process dies in a way no handler sees (SIGKILL), so nothing is left running. The ``tagtune ui``
command stops them on Ctrl-C, SIGTERM, SIGHUP and on its own parent's death.

:func:`comparisons` saves the views a researcher wants first in the study's experiment, as
MLflow's own Share button does, and returns their links: the cells' table with the headline
metric, method, proportion and best params as its first columns; the cells, then each
proportion's replicates of every method, as charts led by the headline metric.
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
    compare: list[tuple[str, str]] = field(default_factory=list)
    """(what, URL): the study's charts in MLflow's runs page (see :func:`comparisons`)."""

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
    from tagtune.analysis.importance import is_sqlite
    from tagtune.study.folder import OPTUNA_JOURNAL, load_study, optuna_store

    settings = load_study(study_dir)
    uri, study_dir = settings.tracking_uri, settings.study_dir
    exp = experiment_id(uri, settings.name)
    db = optuna_store(study_dir)
    if optuna and db is None:
        raise ConfigError("optuna", f"no {OPTUNA_JOURNAL} yet: it is written when the search "
                          "phase ends", where=str(study_dir))
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
                # A journal file by its path; an earlier tagtune's SQLite file by its URL.
                [str(BIN / "optuna-dashboard"), f"sqlite:///{db}" if is_sqlite(db) else str(db),
                 "--host", "127.0.0.1",
                 "--port", str(optuna_port)],
                f"http://127.0.0.1:{optuna_port}/api/meta", "optuna-dashboard", log, timeout_s))
            ui.optuna_url = f"http://127.0.0.1:{optuna_port}/dashboard"
        base = f"http://127.0.0.1:{port}" if local else uri.rstrip("/")
        views = comparisons(uri, exp, base)
        if views:  # the runs page opens on the cells' table; the charts are the comparisons
            ui.mlflow_url, ui.compare = views[0][1], views[1:]
    except BaseException:
        ui.stop()
        raise
    return ui


# MLflow 3.17's UI, as its built JavaScript (mlflow/server/js/build) reads them:
# - the experiment tag ``mlflow.sharedViewState.<key>`` holds a saved view of the runs page (its
#   "Share" button writes them): an envelope {name, createdAt, updatedAt, state} whose state is
#   the JSON of the page's search facets (searchFilter, orderByKey, orderByAsc, ...) and view
#   (selectedColumns, runsHiddenMode, ...); ``?viewStateShareKey=<key>`` in the runs page's URL
#   opens it;
# - ``compareRunsMode=CHART`` opens the page's charts, whose default set starts with the
#   experiment's primary metric (the tag ``mlflow.experiment.primaryMetric.name``).
SHARED_VIEW = "mlflow.sharedViewState."
PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"
CELLS_FILTER = "tags.`tagtune.cell_run` != ''"  # the cells' parent runs: not trials, not analysis


def view_url(base: str, experiment: str, key: str, charts: bool = False) -> str:
    """The runs page of ``experiment`` opened on the shared view ``key`` (with ``charts``: its
    charts, the primary metric's first, beside the runs' list)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    # workflowType: the UI's GenAI / model-training switch, else from the browser's storage (a
    # fresh browser: GenAI).
    return (f"{base}/#/experiments/{experiment}/runs?viewStateShareKey={key}{mode}"
            f"&workflowType=machine_learning")


def view_state(search: str, metric: str, columns: list[str]) -> dict:
    """A runs-page view: the runs ``search`` finds, best ``metric`` first, ``columns`` (MLflow's
    canonical keys: ``metrics.`name```, ``tags.`name```, ``params.`name```) in that order, every
    run shown in the charts (not the first 10)."""
    return {"searchFilter": search, "orderByKey": f"metrics.`{metric}`", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns, "runsHiddenMode": "SHOW_ALL",
            "runListHidden": False, "hideEmptyCharts": True}


def headline_charts(metric: str, params: list[str]) -> dict:
    """The charts of a view: a section of its own, first, holding the ``metric``'s bar chart (one
    bar a run) and a parallel-coordinates chart of ``params`` against it. MLflow adds a chart per
    other metric in sections after it (runs without that metric are not in its chart)."""
    section = "tagtune-headline"
    card = {"deleted": False, "isGenerated": False, "metricSectionId": section}
    return {
        "compareRunSections": [{"uuid": section, "name": f"tagtune: {metric}", "display": True,
                                "isReordered": True, "deleted": False, "isGenerated": False}],
        "compareRunCharts": [
            {**card, "uuid": "tagtune-headline-bar", "type": "BAR", "metricKey": metric,
             "displayName": metric},
            {**card, "uuid": "tagtune-headline-parallel", "type": "PARALLEL",
             "selectedParams": params, "selectedMetrics": [metric], "showAllRuns": True}],
        "isAccordionReordered": True}


def share(client, experiment: str, key: str, name: str, state: dict) -> None:
    """Save ``state`` as the experiment's shared view ``key`` (what the UI's Share button saves)."""
    now = int(time.time() * 1000)
    client.set_experiment_tag(experiment, f"{SHARED_VIEW}{key}", json.dumps(
        {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}))


def comparisons(tracking_uri: str, experiment: str, base: str) -> list[tuple[str, str]]:
    """The study's views in MLflow's runs page, each a shared view saved in the experiment
    (:func:`share`) and its link: the cells' table (the headline metric, method, proportion and
    best params as its first columns, best first; trials, replicates and the analysis run
    apart); the cells' charts (the headline metric first: one bar a cell, so every method's best
    config at every proportion side by side); per proportion, the replicates of every method
    there (the headline metric first, one bar a seed). Before any replicate has a test result
    only the table, by validation loss. Empty before any cell has a run."""
    from mlflow.tracking import MlflowClient

    from tagtune.launch.preflight import quick_mlflow_http
    from tagtune.launch.tracking import CELL_TAG
    from tagtune.study.folder import proportion_text
    from tagtune.study.methods.registry import searched

    with quick_mlflow_http():
        client = MlflowClient(tracking_uri)
        parents = client.search_runs([experiment], f"tags.`{CELL_TAG}` != ''", max_results=1000,
                                     order_by=["attributes.run_name ASC"])
        if not parents:
            return []
        metric = headline(set().union(*(r.data.metrics for r in parents)))
        methods = list(dict.fromkeys(r.data.tags.get("method") for r in parents))
        best_params = list(dict.fromkeys(
            ["lr", *(p.name for m in methods if m for p in searched(m))]))
        shown = metric or "val/best_loss"
        columns = [f"metrics.`{shown}`", "tags.`method`", "tags.`proportion`",
                   *(f"params.`{p}`" for p in best_params)]
        out = []
        share(client, experiment, "tagtune-cells", "tagtune: cells", view_state(
            CELLS_FILTER, shown, columns) | ({} if metric else {"orderByAsc": True}))
        out.append((f"the cells' table: {shown}, method, proportion, best params ({len(parents)} cells)",
                    view_url(base, experiment, "tagtune-cells")))
        if metric is None:
            return out
        client.set_experiment_tag(experiment, PRIMARY_METRIC, metric)
        share(client, experiment, "tagtune-cells-charts", "tagtune: cells, charts",
              view_state(CELLS_FILTER, metric, columns[:3]) | headline_charts(metric, ["method", "missing"]))
        out.append((f"every method's best config per proportion, {metric} plotted first",
                    view_url(base, experiment, "tagtune-cells-charts", charts=True)))
        for proportion in sorted({float(r.data.tags["proportion"]) for r in parents}):
            at = proportion_text(proportion)  # as the cell ids write it (a trial's tag: 0.4)
            key = f"tagtune-replicates-{at}"
            share(client, experiment, key, f"tagtune: replicates at {proportion:.0%} removed",
                  view_state(f"tags.phase = 'replicate' and tags.cell LIKE '%@{at}'", metric,
                             [f"metrics.`{metric}`", "tags.`method`", "tags.`seed`"])
                  | headline_charts(metric, ["method", "seed"]))
            out.append((f"the replicates of every method at {float(proportion):.0%} removed, "
                        f"{metric} plotted first", view_url(base, experiment, key, charts=True)))
    return out


def headline(metrics: set[str]) -> str | None:
    """The headline test metric among a cell run's metric names (as ``tagtune analyze`` picks
    it: SONYC's DCASE macro AUPRC, else F1 macro; full truth first), None before replicates."""
    from tagtune.analysis.table import DCASE_HEADLINES

    return next((m for m in (*DCASE_HEADLINES, "test_full/f1_macro", "test/f1_macro")
                 if m in metrics), None)


__all__ = ["UI", "check_port", "comparisons", "experiment_id", "headline", "port_holder", "served",
           "share", "start_ui", "view_state", "view_url"]
