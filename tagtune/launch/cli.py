"""The ``tagtune`` command. Every subcommand is a thin wrapper over a plain function.

Bad input (a :class:`DataError` or :class:`ConfigError`) prints one line to stderr
and exits with code 2; no traceback.
"""

from __future__ import annotations

import functools
import sys

import typer

from tagtune.study.config import ConfigError
from tagtune.study.data import DataError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
data_app = typer.Typer(no_args_is_help=True, help="Read, convert, generate and describe datasets.")
app.add_typer(data_app, name="data")

USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ConfigError)


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit-2 exception to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code=2)


def user_errors(fn):
    """Turn the project's input errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise fail(str(e)) from None

    return wrapper


# Subcommands register themselves on import.
from tagtune.launch import cli_analysis, cli_data, cli_study, cli_train  # noqa: E402,F401


def main() -> None:
    app()

