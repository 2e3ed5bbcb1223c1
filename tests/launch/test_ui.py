"""`tagtune ui` in a real browser: headless Chromium (Debian's package, driven by Playwright)
finds the tiny study's cells as parent runs in MLflow's runs table, their trials and
replicates nested under them by name, and the cells' studies in optuna-dashboard; Ctrl-C
leaves nothing running. Without Chromium (or Playwright) the browser test is skipped, saying
why; `.ci/run` installs Chromium, so CI always runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tests.conftest import TINY_STUDY
from tests.launch.processes import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# The values of one metric on MLflow's compare-runs page. Its metrics table is two virtualised
# grids (names | one column per run) whose cells line up by their CSS ``top``: the values are
# the cells of the other grids at the name cell's height.
METRIC_ROW = """(name) => {
  const a = [...document.querySelectorAll('a')].find(x => x.textContent.trim() === name);
  if (!a) return [];
  let cell = a; while (cell.parentElement && !cell.style.top) cell = cell.parentElement;
  let box = cell.parentElement;
  while (box && box.querySelectorAll('[role=rowgroup]').length < 2) box = box.parentElement;
  if (!box) return [];
  return [...box.querySelectorAll('[role=rowgroup]')].filter(g => !g.contains(cell))
    .flatMap(g => [...g.children].filter(d => d.style.top === cell.style.top)
    .map(d => d.innerText.trim()));
}"""


def _metric_row(page, name: str) -> list[str]:
    """The values of metric ``name`` on the compare page, scrolling its virtualised grids (only
    the rows in view are in the page) until the row is there."""
    page.get_by_text("Metrics", exact=True).first.wait_for(timeout=60_000)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        values = page.evaluate(METRIC_ROW, name)
        if values:
            return values
        page.evaluate("document.querySelectorAll('.ReactVirtualized__Grid')"
                      ".forEach(g => { g.scrollTop += 120; })")
        time.sleep(0.3)
    raise AssertionError(f"no row {name!r} on the compare page")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium here (apt-get install chromium): the browser test needs it")
    return pytest.importorskip("playwright.sync_api", reason="no Playwright (pip install playwright)")


# Where a person looks first on MLflow's pages, read from the page itself.
# The runs table (ag-grid): its column headers in order, and a column's cells by row.
HEADERS = """() => [...document.querySelectorAll('.ag-header-row-column [role=columnheader]')]
  .sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left)
  .map(h => h.innerText.trim()).filter(t => t)"""
COLUMN = """(name) => {
  const h = [...document.querySelectorAll('[role=columnheader]')].find(x => x.innerText.trim() === name);
  if (!h) return null;
  const id = h.getAttribute('col-id');
  const out = {};
  for (const row of document.querySelectorAll('.ag-center-cols-container [role=row]')) {
    const cell = row.querySelector(`[col-id="${id}"]`);
    const rid = row.getAttribute('row-id') || row.getAttribute('row-index');
    if (cell) out[rid] = cell.innerText.trim();
  }
  const names = {};
  for (const row of document.querySelectorAll('[role=row]')) {
    const a = row.querySelector('a');
    const rid = row.getAttribute('row-id') || row.getAttribute('row-index');
    if (a && rid !== null && a.innerText.trim()) names[rid] = a.innerText.trim();
  }
  return Object.keys(out).filter(k => names[k]).map(k => [names[k], out[k]]);
}"""
# The charts: the first section's title, and its first chart's title and bars (plotly's data:
# one bar a run, the run ids on the axis and the values as the bars' lengths).
FIRST_CHART = """() => {
  const plot = document.querySelector('.js-plotly-plot');
  if (!plot || !plot.data || !plot.data.length) return null;
  const up = (test) => { let e = plot; while (e && !test(e.innerText || '')) e = e.parentElement; return e; };
  const section = up(t => /^[^\\n]+\\n\\(\\d+\\)/.test(t));
  const card = up(t => t.split('\\n')[0].trim().length > 0 && !/^[\\d.]+$/.test(t.split('\\n')[0].trim()));
  return {section: section ? section.innerText.split('\\n')[0] : '',
          card: card ? card.innerText.split('\\n')[0] : '',
          type: plot.data[0].type, runs: plot.data[0].y, values: plot.data[0].x};
}"""


def _wait_for(page, script: str, arg=None, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(script, arg) if arg is not None else page.evaluate(script)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"nothing on the page for {script[:60]!r}")


@pytest.mark.timeout(600)  # with the tiny study when it runs first, on 2 busy cores
def test_ui_opens_mlflow_on_the_headline_metric_and_optuna_dashboard(tiny_study):
    sync_api = _browser()
    settings, result = tiny_study
    port, optuna_port = free_port(), free_port()
    ui = subprocess.Popen([sys.executable, "-m", "tagtune", "ui", str(result.study_dir), "--port",
                           str(port), "--optuna", "--optuna-port", str(optuna_port), "--no-browser"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [ui.stdout.readline().strip()]
        assert lines[0].startswith("MLflow runs: "), (lines, ui.stderr.read()[-2000:])
        while lines[-1] != "Ctrl-C stops them.":
            lines.append(ui.stdout.readline().strip())
        urls = {}
        for line in lines:
            if ": " in line and line.split(": ", 1)[0] in ("MLflow runs", "Compare", "Optuna"):
                urls.setdefault(line.split(":", 1)[0], []).append(line.split(": ", 1)[1].strip())
        (table_url,), (optuna_url,) = urls["MLflow runs"], urls["Optuna"]
        base = f"http://127.0.0.1:{port}/#/experiments/{result.experiment_id}/runs?viewStateShareKey="
        assert table_url == f"{base}tagtune-cells&workflowType=machine_learning"
        cells_charts, *replicate_charts = urls["Compare"]
        assert len(replicate_charts) == len(TINY_STUDY["missing"])
        metric, parents, ids = _cell_values(result)
        cells = [f"{m}@{p:.2f}" for m in TINY_STUDY["methods"] for p in TINY_STUDY["missing"]]
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1800, "height": 1100})
            # The runs table: the cells alone, best first; the first columns after the run's
            # name and date are the headline metric, the method, the proportion, the best lr.
            page.goto(table_url)
            for cell in cells:
                page.get_by_text(cell, exact=True).first.wait_for(timeout=60_000)
            headers = list(dict.fromkeys(_wait_for(page, HEADERS)))
            first = [h for h in headers if h not in ("Run Name", "Created", "Duration", "Metrics",
                                                      "Tags", "Parameters")]
            assert first[:4] == [metric, "method", "proportion", "lr"], headers
            shown = dict(_wait_for(page, COLUMN, metric))
            assert set(shown) == set(cells), shown  # no trial, replicate or analysis run
            for cell, text in shown.items():
                assert float(text.rstrip(".…")) == pytest.approx(parents[cell], abs=1e-6), (cell, text)
            assert page.get_by_text("analysis", exact=True).count() == 0
            # The cells' charts: the first section is the headline metric's, its first chart a
            # bar a cell whose lengths are the cells' headline values.
            page.goto("about:blank")  # a change of the hash alone does not load the new view
            page.goto(cells_charts)
            chart = _wait_for(page, FIRST_CHART)
            assert chart["section"].startswith(f"tagtune: {metric}"), chart
            assert chart["card"].startswith(metric) and chart["type"] == "bar", chart
            assert dict(zip(chart["runs"], chart["values"], strict=True)) == pytest.approx(
                {ids[c]: v for c, v in parents.items()}), chart
            for axis in ("method", "missing"):  # the parallel coordinates: method, proportion
                page.get_by_text(axis, exact=True).first.wait_for(timeout=30_000)
            # Per proportion, every method's replicates: one bar a seed, the headline values.
            for url, p in zip(replicate_charts, TINY_STUDY["missing"], strict=True):
                page.goto("about:blank")
                page.goto(url)
                chart = _wait_for(page, FIRST_CHART)
                reps = _replicate_values(result, metric, p)
                assert chart["section"].startswith(f"tagtune: {metric}") and chart["type"] == "bar"
                assert dict(zip(chart["runs"], chart["values"], strict=True)) == pytest.approx(reps)
                assert len(reps) == len(TINY_STUDY["methods"]) * TINY_STUDY["replicates"]
            page.goto(optuna_url)
            for cell in cells:  # one Optuna study per cell
                page.get_by_text(cell).first.wait_for(timeout=60_000)
            browser.close()
    finally:
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rc = ui.wait(timeout=60)
    assert rc == 0
    deadline = time.monotonic() + 10
    while (_listening(port) or _listening(optuna_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening(port) and not _listening(optuna_port), "a server was left running"


def _cell_values(result) -> tuple[str, dict[str, float], dict[str, str]]:
    """The headline metric of the cells' parent runs, its value per cell, the runs' ids."""
    from mlflow.tracking import MlflowClient

    from tagtune.launch.tracking import CELL_TAG
    from tagtune.launch.ui import headline

    runs = MlflowClient(result.tracking_uri).search_runs(
        [result.experiment_id], f"tags.`{CELL_TAG}` != ''")
    metric = headline(set().union(*(r.data.metrics for r in runs)))
    return (metric, {r.info.run_name: r.data.metrics[metric] for r in runs},
            {r.info.run_name: r.info.run_id for r in runs})


def _replicate_values(result, metric: str, proportion: float) -> dict[str, float]:
    """Run id -> headline value of every replicate at ``proportion``, whatever its method."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(result.tracking_uri).search_runs([result.experiment_id], "tags.phase = 'replicate'")
    return {r.info.run_id: r.data.metrics[metric] for r in runs
            if float(r.data.tags["proportion"]) == proportion}


def test_the_views_are_saved_in_the_experiment_and_find_their_runs(tiny_study):
    from mlflow.tracking import MlflowClient

    from tagtune.launch.ui import PRIMARY_METRIC, SHARED_VIEW, comparisons

    settings, result = tiny_study
    links = comparisons(result.tracking_uri, result.experiment_id, "http://h:1")
    client = MlflowClient(result.tracking_uri)
    exp = client.get_experiment(result.experiment_id)
    metric, parents, ids = _cell_values(result)
    assert exp.tags[PRIMARY_METRIC] == metric
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI
    keys = [url.split("viewStateShareKey=", 1)[1].split("&", 1)[0] for _, url in links]
    assert keys == ["tagtune-cells", "tagtune-cells-charts",
                    *(f"tagtune-replicates-{p:.2f}" for p in TINY_STUDY["missing"])]
    assert all(url.startswith(f"http://h:1/#/experiments/{result.experiment_id}/runs?") and
               url.endswith("&workflowType=machine_learning") for _, url in links)
    assert ["compareRunsMode=CHART" in url for _, url in links] == [False] + [True] * (len(links) - 1)
    for key in keys:
        envelope = json.loads(exp.tags[f"{SHARED_VIEW}{key}"])  # what MLflow's Share button saves
        assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
        state = json.loads(envelope["state"])
        assert state["selectedColumns"][0] == f"metrics.`{metric}`"
        assert state["orderByKey"] == f"metrics.`{metric}`" and state["orderByAsc"] is False
        # Its filter is MLflow's search syntax and finds the runs the view is about.
        found = client.search_runs([result.experiment_id], state["searchFilter"], max_results=1000)
        if key.startswith("tagtune-cells"):
            assert sorted(r.info.run_name for r in found) == sorted(parents)
        else:
            p = float(key.rsplit("-", 1)[1])
            assert {r.info.run_id for r in found} == set(_replicate_values(result, metric, p))
        if key != "tagtune-cells":
            (section,) = state["compareRunSections"]
            bar, parallel = state["compareRunCharts"]
            assert (bar["type"], bar["metricKey"], bar["metricSectionId"]) == ("BAR", metric,
                                                                              section["uuid"])
            assert parallel["type"] == "PARALLEL" and parallel["selectedMetrics"] == [metric]
    cells_state = json.loads(json.loads(exp.tags[f"{SHARED_VIEW}tagtune-cells"])["state"])
    assert cells_state["selectedColumns"][:4] == [f"metrics.`{metric}`", "tags.`method`",
                                                  "tags.`proportion`", "params.`lr`"]
    # Each searched parameter of the study's methods is a column (MT's alpha and beta, LE's gamma).
    assert {"params.`alpha`", "params.`beta`", "params.`gamma`"} <= set(cells_state["selectedColumns"])


def test_ui_port_in_use_is_one_line_exit_2_naming_its_holder(tiny_study):
    settings, result = tiny_study
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = CliRunner().invoke(app, ["ui", str(result.study_dir), "--port", str(port)])
    assert r.exit_code == 2
    holder = f" (held by pid {os.getpid()}: " if sys.platform.startswith("linux") else ""
    line = r.output.strip()
    assert line.startswith(f"error: ui: port: port {port} on 127.0.0.1 is in use{holder}"), line
    assert line.endswith("; choose another with --port") and "\n" not in line


def _guarded(study_dir) -> list[int]:
    """Every process of the sessions of the ui's server guards for this study (the guards, the
    servers, their workers)."""
    from tests.launch.processes import cmdline, session_pids

    guards = [int(e) for e in os.listdir("/proc") if e.isdigit()
              and "tagtune.launch.ui_guard" in (c := cmdline(int(e))) and str(study_dir) in c]
    return sorted({pid for g in guards for pid in session_pids(g)})


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie has ended; its parent just has not reaped it yet
            out.append(pid)
    return out


# Ctrl-C in `make test`; the other endings in the second tier (`make test-long`).
ENDINGS = ["SIGINT", *(pytest.param(e, marks=pytest.mark.long)
                       for e in ("SIGTERM", "SIGHUP", "its parent dies", "SIGKILL"))]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the guard uses prctl")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("ending", ENDINGS)
def test_every_way_of_ending_the_ui_ends_its_servers(tiny_study, ending):
    settings, result = tiny_study
    port, optuna_port = free_port(), free_port()
    command = [sys.executable, "-m", "tagtune", "ui", str(result.study_dir), "--port", str(port),
               "--optuna", "--optuna-port", str(optuna_port), "--no-browser"]
    if ending == "its parent dies":  # a job runner killed: the ui itself is told by the kernel
        command = [sys.executable, "-c", "import subprocess, sys, time; "
                   "subprocess.Popen(sys.argv[1:]); time.sleep(600)", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        lines = []
        while not lines or lines[-1] != "Ctrl-C stops them.":
            line = proc.stdout.readline()
            assert line, ("the ui ended early", lines, proc.stderr.read()[-2000:])
            lines.append(line.strip())
        servers = _guarded(result.study_dir)
        assert len(servers) >= 4, servers  # 2 guards, mlflow + its uvicorn, optuna-dashboard
        assert _listening(port) and _listening(optuna_port)
        t0 = time.monotonic()
        sig = signal.SIGKILL if ending == "its parent dies" else getattr(signal, ending)
        proc.send_signal(sig)
        while (_alive(servers) or _listening(port) or _listening(optuna_port)) and \
                time.monotonic() - t0 < 10:
            time.sleep(0.1)
        took = time.monotonic() - t0
        # Looked at before the cleanup below, which would end them through the ui's death.
        left, held = _alive(servers), [p for p in (port, optuna_port) if _listening(p)]
    finally:
        from tests.launch.processes import kill_session

        kill_session(proc)
    assert not left, f"left running after {ending}: {left}"
    assert not held, f"ports still held after {ending}: {held}"
    print(f"{ending}: servers gone after {took:.1f} s")


@pytest.mark.parametrize(("uri", "on_a_server"), [
    ("http://10.0.0.5:5000", True), ("https://mlflow.example.org/", True),
    ("sqlite:////data/study/mlflow.db", False), ("postgresql://tagtune@db:5432/mlflow", False),
    ("file:///data/mlruns", False), ("/data/mlruns", False)])
def test_only_an_mlflow_server_is_linked_every_other_store_gets_a_local_ui(uri, on_a_server):
    from tagtune.launch.ui import served

    assert served(uri) is on_a_server
