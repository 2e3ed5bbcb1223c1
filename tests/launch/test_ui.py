"""`tagtune ui` in a real browser: headless Chromium (Debian's package, driven by Playwright)
finds the tiny study's cells as parent runs in MLflow's runs table, their trials and
replicates nested under them by name, and the cells' studies in optuna-dashboard; Ctrl-C
leaves nothing running. Without Chromium (or Playwright) the browser test is skipped, saying
why; `.ci/run` installs Chromium, so CI always runs it."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tests.conftest import TINY_STUDY
from tests.launch.processes import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
        mlflow_line, optuna_line = ui.stdout.readline(), ui.stdout.readline()
        assert mlflow_line.startswith("MLflow runs: "), (mlflow_line, ui.stderr.read()[-2000:])
        mlflow_url = mlflow_line.split(": ", 1)[1].strip()
        assert mlflow_url == f"http://127.0.0.1:{port}/#/experiments/{result.experiment_id}/runs"
        optuna_url = optuna_line.split(": ", 1)[1].strip()
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
            browser.close()
    finally:
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rc = ui.wait(timeout=60)
    assert rc == 0
    deadline = time.monotonic() + 10
    while (_listening(port) or _listening(optuna_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening(port) and not _listening(optuna_port), "a server was left running"


def test_ui_port_in_use_is_one_line_exit_2(tiny_study):
    settings, result = tiny_study
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = CliRunner().invoke(app, ["ui", str(result.study_dir), "--port", str(port)])
    assert r.exit_code == 2
    assert r.output.strip() == (f"error: ui: port: port {port} on 127.0.0.1 is in use; "
                                "choose another with --port")


@pytest.mark.parametrize(("uri", "on_a_server"), [
    ("http://10.0.0.5:5000", True), ("https://mlflow.example.org/", True),
    ("sqlite:////data/study/mlflow.db", False), ("postgresql://tagtune@db:5432/mlflow", False),
    ("file:///data/mlruns", False), ("/data/mlruns", False)])
def test_only_an_mlflow_server_is_linked_every_other_store_gets_a_local_ui(uri, on_a_server):
    from tagtune.launch.ui import served

    assert served(uri) is on_a_server
