"""What a method module declares about its parameters: type, valid range, default, help, search.

A parameter is a field of its method's ``Params`` dataclass (``gamma``, ``alpha``, ...: the name
configs, CLI flags, MLflow params, checkpoints and exported YAML use, flat, as when a run's
config held every method's as its own fields): ``gamma: float = GAMMA.field()``. It is declared
once, in the module of the method that introduced it, and reused by the methods that share it
(LE + MT's Params takes LE's and MT's, SPLC's takes Hill's margin). From these declarations come
the config's range checks, the ``tagtune train`` flags, the Optuna ranges, ``default.yaml`` and
the README's method table (see :mod:`tagtune.study.methods.registry`). No torch here: the
declarations are plain data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Bounds:
    """An interval of valid values: ``low``/``high`` None for unbounded, each end closed unless open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        low_ok = self.low is None or (v > self.low if self.low_open else v >= self.low)
        return low_ok and (self.high is None or (v < self.high if self.high_open else v <= self.high))

    def words(self, two_sided: str = "in") -> str:
        """``in [0, 100]``, ``>= 0``, ``> 0`` or ``finite`` (``two_sided``: the word before an interval)."""
        if self.low is not None and self.high is not None:
            return (f"{two_sided} {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "finite"

    def holds(self, low: float, high: float) -> bool:
        """Whether a search range [low, high] lies within these bounds."""
        return ((self.low is None or (low > self.low if self.low_open else low >= self.low))
                and (self.high is None or (high < self.high if self.high_open else high <= self.high)))


@dataclass(frozen=True)
class Search:
    """How Optuna searches a parameter: the default range (overridable in YAML) and its scale."""

    low: float
    high: float
    log: bool = False
    name: str | None = None
    """Optuna's (and the ranges') name where it is not the field's: MT's ``one_minus_alpha``."""
    complement: bool = False
    """The searched value is 1 - the field's: alpha = 1 - one_minus_alpha (log scale near 1)."""
    bounds: Bounds | None = None
    """Valid ranges of the searched value, where not the field's (log scale: low > 0)."""
    label: str | None = None
    """Its axis label in the analysis' figures, after the method's (None: the Optuna name)."""


@dataclass(frozen=True)
class Param:
    """One parameter of a method (a field of its ``Params``): what only some methods read."""

    name: str
    kind: type
    """float, int, bool or str."""
    default: Any
    """The paper's or the authors' value (TrainConfig's default; the paper's per-dataset values
    are the presets')."""
    help: str
    """One line: what it is, as the paper names it."""
    bounds: Bounds | None = None
    """Valid values (None: any value of ``kind``)."""
    choices: tuple[str, ...] = ()
    """The valid values of a str parameter."""
    optional: bool = False
    """None is valid too (its meaning is in ``help``)."""
    search: Search | None = None
    """How a study searches it, for the methods that list it as searched."""

    def field(self) -> Any:
        """This parameter as a field of a method's ``Params`` dataclass: its default, and this
        declaration as the field's metadata (``param``), where the registry reads it."""
        return dataclasses.field(default=self.default, metadata={"param": self})

    def problem(self, v: Any) -> str | None:
        """What is wrong with ``v`` (one line without the name), or None."""
        if v is None and self.optional:
            return None
        if self.choices and v not in self.choices:
            return f"unknown {v!r}; use one of {', '.join(self.choices)}"
        if self.bounds is not None and v not in self.bounds:
            return f"must be {self.bounds.words()}, got {v}"
        return None

    @property
    def search_name(self) -> str:
        return (self.search.name if self.search and self.search.name else self.name)

    @property
    def search_bounds(self) -> Bounds:
        return (self.search.bounds if self.search and self.search.bounds else self.bounds) or Bounds()

    def valid(self) -> str:
        """The valid values in words, for help texts and the method table."""
        if self.choices:
            return " or ".join(self.choices)
        words = self.bounds.words() if self.bounds else ("true or false" if self.kind is bool else "")
        return f"{words} or none" if self.optional else words


__all__ = ["Bounds", "Param", "Search"]
