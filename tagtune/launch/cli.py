"""The ``tagtune`` command.

Each command module defines its own Typer app and imports only
:mod:`tagtune.launch.cli_common`; this module adds them (no import runs in a circle).
Bad input (a DataError or ConfigError) prints one line to stderr and exits with code 2.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from tagtune.launch import cli_analysis, cli_data, cli_study, cli_train, cli_ui

# Paragraphs as single lines: Typer keeps a line break inside one.
HELP = (
    "Compare methods for audio tagging with missing labels (B0, B1, label enhancing, mean "
    "teacher, ...) as a hyperparameter study: each (method, proportion of labels removed) is "
    "tuned by Optuna on Ray Tune, its best config retrained with several seeds, every run "
    "tracked in MLflow; then a report says which method wins where, and by how much.\n\n"
    "Start with `tagtune data synth` or `tagtune data convert`, run `tagtune study`, then read "
    "it with `tagtune analyze` (report) and `tagtune ui` (MLflow, Optuna's dashboard)."
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP)


def _version(value: bool) -> None:
    if value:
        try:
            print(f"tagtune {version('tagtune')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("tagtune (not installed)")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass


app.add_typer(cli_data.data_app, name="data")
app.add_typer(cli_train.app)
app.add_typer(cli_study.study_app, name="study")
app.add_typer(cli_study.mlflow_app, name="mlflow")
app.add_typer(cli_analysis.app)
app.add_typer(cli_ui.app)


def main() -> None:
    """The ``tagtune`` command (and ``python -m tagtune``); tests call ``app`` in-process instead."""
    try:
        app()
        code = 0
    except SystemExit as e:  # Typer ends every command this way
        code = e.code
    if "ray" in sys.modules and isinstance(code, int):  # a study ran here (study, resume, extend)
        from tagtune.launch.ray_start import exit_process

        exit_process(code)
    sys.exit(code)


__all__ = ["app", "main"]
