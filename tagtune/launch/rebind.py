"""A resumed phase's callbacks are this run's, without reaching into Tune's private objects.

``Tuner.restore`` unpickles the run config, callbacks included, from ``tuner.pkl`` as it was
when the phase began: a moved study's callbacks would still write where it lived then (its
journal, its MLflow store, its ``last-good/``). A :class:`Rebindable` callback unpickled inside
:func:`rebinding` takes the state of this run's callback of its class instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_FRESH: dict[type, Any] = {}


class Rebindable:
    """Mixin for a callback: unpickled within :func:`rebinding`, it is this run's one."""

    def __setstate__(self, state: dict) -> None:
        fresh = _FRESH.get(type(self))
        self.__dict__.update(dict(fresh.__dict__) if fresh is not None else state)


@contextlib.contextmanager
def rebinding(callbacks: list) -> Iterator[None]:
    """While Tune restores an experiment: its Rebindable callbacks become ``callbacks``' own."""
    _FRESH.update({type(c): c for c in callbacks if isinstance(c, Rebindable)})
    try:
        yield
    finally:
        _FRESH.clear()


__all__ = ["Rebindable", "rebinding"]
