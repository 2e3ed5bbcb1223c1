"""The methods, found in this package: every module but the shared ones is one method.

A method module declares, at its top, in the style of USB's algorithm files:

- ``NAME`` (its module name), ``LABEL`` (its name in figures and tables: LE+MT), ``SUMMARY``
  (one line: what it does with a missing label),
  ``SOURCE`` (the papers), ``ORDER`` (its place in :data:`METHODS`: the paper's four first,
  then the newer ones as they came);
- ``OBSERVATIONS``: the kinds of training labels it can learn from;
- ``PARAMS``: its :class:`~tagtune.study.methods.declare.Param` s (TrainConfig fields, shared
  ones declared once in the module that introduced them), and ``SEARCHED``, those a study's
  Optuna searches (with ``lr``, which every method searches);
- ``step(batch, state) -> (loss, logs)``,

and, where it needs them, the hooks the fit loop calls (:class:`Hooks`: ``STAGES``,
``begin_stage``, ``stage_lr``, ``make_teacher``, ``networks``, ``other_suffix``,
``after_step``) and ``SHARED_TEACHER`` (its stage 1 can be given to ``fit`` and is shared
between a study's trials). Everything else -- :data:`METHODS`, :data:`METHOD_PARAMS`, the
config's range checks, the CLI's flags, the search spaces and the README's method table -- is
derived here, so adding a method is one new module (plus its tests).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tagtune.study.errors import ConfigError
from tagtune.study.methods.declare import Param

SHARED = ("declare", "registry")
"""Modules of this package that are not methods."""


def _discover() -> dict[str, ModuleType]:
    found = [importlib.import_module(f"{__package__}.{m.name}")
             for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in SHARED]
    for module in found:
        declared = ("NAME", "LABEL", "SUMMARY", "SOURCE", "ORDER", "OBSERVATIONS", "PARAMS", "SEARCHED",
                    "step")
        missing = [a for a in declared if not hasattr(module, a)]
        assert not missing, f"{module.__name__} declares no {', '.join(missing)}"
        assert module.NAME == module.__name__.rsplit(".", 1)[-1], module.__name__
        assert set(module.SEARCHED) <= set(module.PARAMS), f"{module.NAME}: SEARCHED not in PARAMS"
        assert all(p.search for p in module.SEARCHED), f"{module.NAME}: a searched parameter without a range"
    found.sort(key=lambda module: module.ORDER)
    assert len({m.ORDER for m in found}) == len(found), "two methods share an ORDER"
    return {m.NAME: m for m in found}


_MODULES = _discover()

METHODS: tuple[str, ...] = tuple(_MODULES)
"""Every method, the paper's four first (Gururani & Lerch 2021), then the newer ones."""
METHOD_PARAMS: dict[str, tuple[str, ...]] = {m: tuple(p.name for p in module.PARAMS)
                                              for m, module in _MODULES.items()}
"""The TrainConfig fields each method reads beyond the common ones: MLflow logs a run's params
from it (a B0 run has no gamma), the analysis leaves the others' columns empty."""


def _params() -> dict[str, Param]:
    out: dict[str, Param] = {}
    for module in _MODULES.values():
        for p in module.PARAMS:
            # One declaration per field: a method that shares a parameter reuses its object.
            assert out.setdefault(p.name, p) is p, f"{p.name} declared twice ({module.NAME})"
    return out


PARAMS: dict[str, Param] = _params()
"""Every method parameter by field name, in the order of METHODS."""


def get(method: str) -> ModuleType:
    """The module of ``method``."""
    if method not in _MODULES:
        raise ConfigError("method", f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return _MODULES[method]


def stages(method: str) -> tuple[str, ...]:
    """The training stages of ``method``: ``("main",)``, or e.g. LE's ``teacher`` and ``student``."""
    return getattr(get(method), "STAGES", ("main",))


def shares_teacher(method: str) -> bool:
    """Whether ``method``'s stage 1 can be given to the fit (and shared between a study's trials)."""
    return getattr(get(method), "SHARED_TEACHER", False)


def supports(method: str, observation: str) -> bool:
    """Whether ``method`` can learn from training labels observed as ``observation``."""
    return observation in get(method).OBSERVATIONS


def check_supported(methods: tuple[str, ...] | list[str], observation: str) -> None:
    """A ConfigError for methods the data's kind of observation cannot train."""
    bad = [m for m in methods if not supports(m, observation)]
    if bad:
        ok = [m for m in METHODS if supports(m, observation)]
        raise ConfigError("method", f"{', '.join(bad)} need observed negatives; "
                          f"{observation} data supports {', '.join(ok)}")


def label(method: str) -> str:
    """How figures and tables name ``method``: B0, LE+MT, LL-R, Partial BCE, ..."""
    return get(method).LABEL


def searched(method: str) -> tuple[Param, ...]:
    """The parameters a study searches for ``method`` besides lr, in the order asked."""
    return tuple(get(method).SEARCHED)


def owners(name: str) -> tuple[str, ...]:
    """The methods that read TrainConfig field ``name`` (empty: a common field)."""
    return tuple(m for m, names in METHOD_PARAMS.items() if name in names)


def check_config(cfg: Any) -> None:
    """The ConfigError of the first invalid method or method parameter of ``cfg``: one check per
    parameter, the one its module declares (every field is checked, whatever the method)."""
    get(cfg.method)
    for p in PARAMS.values():
        problem = p.problem(getattr(cfg, p.name))
        if problem is not None:
            raise ConfigError(p.name, problem)


def _one_network(student, teacher, cfg):
    return student, None


def _initial_lr(cfg, stage: str) -> float:
    return cfg.lr


def _no_suffix(cfg) -> str:
    return ""


@dataclass(frozen=True)
class Hooks:
    """What the fit loop calls of a method; a hook the module leaves out has the default."""

    step: Callable
    """``step(batch, state) -> (loss, logs)``: the loss of one mini-batch."""
    after_step: Callable | None = None
    """``after_step(state)`` after each optimizer step (MT: the EMA update)."""
    make_teacher: Callable | None = None
    """``make_teacher(student) -> network``: a second network made at each stage's start (MT's EMA
    teacher), put into ``MethodState.teacher``."""
    networks: Callable = _one_network
    """``networks(student, teacher, cfg) -> (selected, other)``: what model selection looks at,
    and the other network logged under ``other_suffix(cfg)`` (None: none)."""
    other_suffix: Callable = _no_suffix
    begin_stage: Callable | None = None
    """``begin_stage(fs, previous, train)``: a stage after the first begins (LE: the previous stage's
    selected network, a state dict, enhances the labels of the fresh network in ``fs``)."""
    stage_lr: Callable = _initial_lr
    """``stage_lr(cfg, stage) -> float``: the stage's initial learning rate (default: lr)."""


def hooks(method: str) -> Hooks:
    """The hooks of ``method``, defaults filled in."""
    module = get(method)
    names = [f for f in Hooks.__dataclass_fields__ if hasattr(module, f)]
    return Hooks(**{f: getattr(module, f) for f in names})


def markdown_table() -> str:
    """The README's table of methods (between its ``<!-- methods:start/end -->`` markers): each
    method's name, what it does with a missing label, what a study searches, its source."""
    rows = ["| method | what it does with a missing label | searched | source |", "|---|---|---|---|"]
    for m, module in _MODULES.items():
        searched = ", ".join(["lr", *(p.name for p in module.SEARCHED)])
        rows.append(f"| `{m}` | {module.SUMMARY} | {searched} | {module.SOURCE} |")
    return "\n".join(rows) + "\n"


__all__ = ["METHODS", "METHOD_PARAMS", "PARAMS", "Hooks", "check_config", "check_supported", "get", "hooks",
           "label", "markdown_table", "owners", "searched", "shares_teacher", "stages", "supports"]
