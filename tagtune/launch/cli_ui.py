"""``tagtune ui STUDY_DIR``: the study's runs in the MLflow UI (and its Optuna studies)."""

from __future__ import annotations

import os
import signal
import sys
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from tagtune.launch.cli_common import user_errors

app = typer.Typer()  # added to the `tagtune` command by tagtune.launch.cli


class _Stopped(Exception):
    """SIGTERM or SIGHUP reached ``tagtune ui``: stop the servers as Ctrl-C does."""


def _stop_on(signum, frame) -> None:
    raise _Stopped(signal.Signals(signum).name)


@app.command("ui")
@user_errors
def ui(
    study_dir: Annotated[Path, typer.Argument(
        metavar="STUDY_DIR", help="The study directory (holds study.yaml).")],
    port: Annotated[int, typer.Option(help="Port of the MLflow UI on 127.0.0.1.")] = 5000,
    optuna: Annotated[bool, typer.Option(help="Also optuna-dashboard on the study's Optuna search.")] = False,
    optuna_port: Annotated[int, typer.Option(help="Port of optuna-dashboard on 127.0.0.1.")] = 8080,
    browser: Annotated[bool, typer.Option(
        help="Open the comparison in a browser, where this machine has one with a screen.")] = True,
) -> None:
    """Open a study's runs in the MLflow UI (with --optuna, also Optuna's dashboard).

    Prints the views it saves in the study's MLflow experiment: the cells' table, its first columns the headline metric, method, proportion and best params; the cells as charts, the headline metric first; per proportion, every method's replicates as charts. One parent run per cell, its trials and replicates nested under it in the plain runs table; Optuna's dashboard has one study per cell. Ctrl-C (or SIGTERM, SIGHUP, the end of the terminal) stops both servers.
    """  # noqa: E501 -- one line: Typer keeps a line break inside a paragraph
    from tagtune.launch.ui import start_ui
    from tagtune.launch.ui_guard import parent_death_signal

    # Installed before the servers start: a signal during their start stops what has started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on)
    parent = os.getppid()
    parent_death_signal(signal.SIGTERM)  # our own parent gone (a job runner killed): SIGTERM
    if os.getppid() != parent:
        return
    try:
        servers = start_ui(study_dir, port=port, optuna=optuna, optuna_port=optuna_port)
    except _Stopped:
        return
    try:
        print(f"MLflow runs: {servers.mlflow_url}", flush=True)
        for what, url in servers.compare:
            print(f"Compare:     {url}\n             ({what})", flush=True)
        if servers.optuna_url:
            print(f"Optuna:      {servers.optuna_url}", flush=True)
        if browser and servers.compare and _has_screen():
            webbrowser.open(servers.compare[0][1])
        if not servers.processes:  # a tracking server elsewhere: nothing of ours to keep running
            return
        print("Ctrl-C stops them.", flush=True)
        rc = servers.wait()
        print(f"a server ended (exit {rc}); see {Path(study_dir) / 'ui.log'}")
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the stop short
        servers.stop()


def _has_screen() -> bool:
    """A browser can show a page here: macOS or Windows, or a graphical session on Linux."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
