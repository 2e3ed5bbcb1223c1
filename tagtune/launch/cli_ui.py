"""``tagtune ui STUDY_DIR``: the study's runs in the MLflow UI (and its Optuna studies)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tagtune.launch.cli_common import user_errors

app = typer.Typer()  # added to the `tagtune` command by tagtune.launch.cli


@app.command("ui")
@user_errors
def ui(
    study_dir: Annotated[Path, typer.Argument(help="The study directory (holds study.yaml).")],
    port: Annotated[int, typer.Option(help="Port of the MLflow UI on 127.0.0.1.")] = 5000,
    optuna: Annotated[bool, typer.Option(help="Also optuna-dashboard on the study's optuna.db.")] = False,
    optuna_port: Annotated[int, typer.Option(help="Port of optuna-dashboard on 127.0.0.1.")] = 8080,
) -> None:
    """Open a study's runs in the MLflow UI (with --optuna, also Optuna's dashboard).

    One parent run per cell, its trials and replicates nested under it; Optuna's dashboard has one study per cell. Ctrl-C stops both servers.
    """  # noqa: E501 -- one line: Typer keeps a line break inside a paragraph
    from tagtune.launch.ui import start_ui

    servers = start_ui(study_dir, port=port, optuna=optuna, optuna_port=optuna_port)
    try:
        print(f"MLflow runs: {servers.mlflow_url}", flush=True)
        if servers.optuna_url:
            print(f"Optuna:      {servers.optuna_url}", flush=True)
        if not servers.processes:  # a tracking server elsewhere: nothing of ours to keep running
            return
        print("Ctrl-C stops them.", flush=True)
        rc = servers.wait()
        print(f"a server ended (exit {rc}); see {Path(study_dir) / 'ui.log'}")
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()
