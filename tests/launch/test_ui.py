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
from urllib.parse import quote

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


@pytest.mark.timeout(300)
def test_ui_shows_the_cells_runs_in_mlflow_and_optuna_dashboard(tiny_study):
    sync_api = _browser()
    settings, result = tiny_study
    port, optuna_port = free_port(), free_port()
    ui = subprocess.Popen([sys.executable, "-m", "tagtune", "ui", str(result.study_dir), "--port",
                           str(port), "--optuna", "--optuna-port", str(optuna_port)],
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
        mlflow_url, (optuna_url,) = urls["MLflow runs"][0], urls["Optuna"]
        assert mlflow_url == f"http://127.0.0.1:{port}/#/experiments/{result.experiment_id}/runs"
        compare_cells, compare_replicates = urls["Compare"]
        cells = [f"{m}@{p:.2f}" for m in TINY_STUDY["methods"] for p in TINY_STUDY["missing"]]
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(mlflow_url)
            for cell in cells:  # the parent runs, by name, in the runs table
                page.get_by_text(cell, exact=True).first.wait_for(timeout=60_000)
            # Expanding a parent shows its trials and replicates, named for a narrow column.
            page.get_by_role("row").filter(has_text="mt@0.40").first.get_by_role("button").first.click()
            for child in ("mt@0.40 #0", "mt@0.40 #1", "mt@0.40 seed 0", "mt@0.40 seed 1"):
                page.get_by_text(child, exact=True).first.wait_for(timeout=30_000)
            page.goto(optuna_url)
            for cell in cells:  # one Optuna study per cell
                page.get_by_text(cell).first.wait_for(timeout=60_000)
            # The comparison: every cell's parent run side by side, its headline metric's value
            # on the page as MLflow prints it (3 decimals); then the winners' replicates.
            metric, parents = _cell_values(result)
            page.set_viewport_size({"width": 3600, "height": 1400})  # the run columns are virtualised too
            page.goto(compare_cells)
            page.get_by_text(f"Comparing {len(cells)} Runs", exact=False).wait_for(timeout=60_000)
            for cell in cells:
                page.get_by_text(cell, exact=True).first.wait_for(timeout=30_000)
            shown = [float(x) for x in _metric_row(page, metric)]
            assert sorted(shown) == pytest.approx(sorted(parents.values()), abs=6e-4), (shown, parents)
            page.goto("about:blank")  # a change of the hash alone does not load the new runs
            page.goto(compare_replicates)
            n = len(TINY_STUDY["missing"]) * TINY_STUDY["replicates"]  # a winner per proportion
            page.get_by_text(f"Comparing {n} Runs", exact=False).wait_for(timeout=60_000)
            for seed in range(TINY_STUDY["replicates"]):
                page.get_by_text(f" seed {seed}", exact=False).first.wait_for(timeout=30_000)
            browser.close()
    finally:
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rc = ui.wait(timeout=60)
    assert rc == 0
    deadline = time.monotonic() + 10
    while (_listening(port) or _listening(optuna_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening(port) and not _listening(optuna_port), "a server was left running"


def _cell_values(result) -> tuple[str, dict[str, float]]:
    """The headline metric of the cells' parent runs, and its value per cell."""
    from mlflow.tracking import MlflowClient

    from tagtune.launch.tracking import CELL_TAG
    from tagtune.launch.ui import headline

    runs = MlflowClient(result.tracking_uri).search_runs(
        [result.experiment_id], f"tags.`{CELL_TAG}` != ''")
    metric = headline(set().union(*(r.data.metrics for r in runs)))
    return metric, {r.info.run_name: r.data.metrics[metric] for r in runs}


def test_the_comparison_links_name_every_cell_and_the_winners_replicates(tiny_study):
    from urllib.parse import unquote

    from mlflow.tracking import MlflowClient

    from tagtune.launch.ui import comparisons

    settings, result = tiny_study
    links = comparisons(result.tracking_uri, result.experiment_id, "http://h:1")
    assert [what.split(" (")[0] for what, _ in links] == [
        "each cell's best config and test means", "replicates of the best cell per proportion"]
    client = MlflowClient(result.tracking_uri)

    def names(url: str) -> list[str]:
        ids = json.loads(unquote(url.split("runs=", 1)[1].split("&", 1)[0]))
        return sorted(client.get_run(i).info.run_name for i in ids)

    assert links[0][1].startswith("http://h:1/#/compare-runs?runs=")
    assert links[0][1].endswith("&experiments=" + quote(json.dumps([result.experiment_id])))
    assert names(links[0][1]) == sorted(f"{m}@{p:.2f}" for m in TINY_STUDY["methods"]
                                        for p in TINY_STUDY["missing"])
    metric, values = _cell_values(result)
    winners = {}
    for cell, v in values.items():
        p = cell.split("@")[1]
        if p not in winners or v > values[winners[p]]:
            winners[p] = cell
    assert names(links[1][1]) == sorted(f"{c} seed {s}" for c in winners.values()
                                        for s in range(TINY_STUDY["replicates"]))


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
