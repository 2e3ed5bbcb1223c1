"""What every ``tagtune`` command module shares: bad input as one line on stderr, exit 2.

Command modules import this, never :mod:`tagtune.launch.cli` (which imports them).
"""

from __future__ import annotations

import functools
import sys

import typer

from tagtune.study.config import ConfigError
from tagtune.study.data import DataError

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


__all__ = ["USER_ERRORS", "fail", "user_errors"]
