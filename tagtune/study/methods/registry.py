"""The methods, found in this package: every module but the shared ones is one method.

A method module declares, at its top, in the style of USB's algorithm files:

- ``NAME`` (its module name), ``LABEL`` (its name in figures and tables: LE+MT), ``SUMMARY``
  (one line: what it does with a missing label),
  ``SOURCE`` (the papers), ``ORDER`` (its place in :data:`METHODS`: the paper's four first,
  then the newer ones as they came);
- ``OBSERVATIONS``: the kinds of training labels it can learn from;
- ``Params``: a frozen dataclass of its parameters, each field a
  :class:`~tagtune.study.methods.declare.Param`'s ``field()`` (a shared one declared once, in the
  module that introduced it); a run's ``TrainConfig.params`` is one. ``SEARCHED``: those a
  study's Optuna searches (with ``lr``, which every method searches);
- ``step(batch, state) -> (loss, logs)``,

and, where it needs them, the hooks the fit loop calls (:class:`Hooks`: ``STAGES``,
``begin_stage``, ``stage_lr``, ``make_teacher``, ``networks``, ``other_suffix``,
``after_step``) and ``SHARED_TEACHER`` (its stage 1 can be given to ``fit`` and is shared
between a study's trials). Everything else -- :data:`METHODS`, :data:`METHOD_PARAMS`, the
config's parameters and their checks, the CLI's flags, the search spaces, ``default.yaml`` and
the README's method table -- is derived here, so adding a method, new parameters included, is
one new module (plus its tests). What a module declares is checked on import: a
:class:`MethodDeclarationError` of one line naming the module, not an ``assert``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from tagtune.study.errors import ConfigError
from tagtune.study.methods.declare import Param

if TYPE_CHECKING:
    from torch import Tensor, nn

    from tagtune.study.methods import Batch, MethodState

SHARED = ("base", "declare", "registry")
"""Modules of this package that are not methods."""
DECLARED = ("NAME", "LABEL", "SUMMARY", "SOURCE", "ORDER", "OBSERVATIONS", "SEARCHED", "step")
"""What every method module declares (``Params`` too, where it has parameters)."""


class MethodDeclarationError(TypeError):
    """A method module that does not declare what a method must; one line naming the module."""

    def __init__(self, module: ModuleType, problem: str):
        super().__init__(f"{module.__name__.replace('.', '/')}.py: {problem}")


@dataclass(frozen=True)
class NoParams:
    """The parameters of a method that has none (B0, B1, WAN)."""


def _params_of(module: ModuleType) -> tuple[Param, ...]:
    cls = getattr(module, "Params", NoParams)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
        raise MethodDeclarationError(module, "Params: must be a frozen dataclass")
    out = []
    for f in dataclasses.fields(cls):
        p = f.metadata.get("param")
        if not isinstance(p, Param) or p.name != f.name:
            raise MethodDeclarationError(module, f"Params.{f.name}: declare it as NAME.field() of a Param "
                                                  f"named {f.name!r}")
        out.append(p)
    return tuple(out)


def _check_module(module: ModuleType) -> None:
    """The one-line MethodDeclarationError of the first thing ``module`` declares wrongly: the
    checks run on import, so a broken method module stops every tagtune command at once."""
    missing = [a for a in DECLARED if not hasattr(module, a)]
    if missing:
        raise MethodDeclarationError(module, f"declares no {', '.join(missing)}")
    if module.NAME != module.__name__.rsplit(".", 1)[-1]:
        raise MethodDeclarationError(module, f"NAME is {module.NAME!r}, not its module's name")
    params = _params_of(module)
    outside = [p.name for p in module.SEARCHED if p not in params]
    if outside:
        raise MethodDeclarationError(module, f"SEARCHED: {', '.join(outside)} not in its Params")
    unranged = [p.name for p in module.SEARCHED if not p.search]
    if unranged:
        raise MethodDeclarationError(module, f"SEARCHED: {', '.join(unranged)} declared without "
                                              "a Search range")
    for name, arity in HOOK_ARITY.items():
        hook = getattr(module, name, None)
        if hook is None:
            continue
        if not callable(hook):
            raise MethodDeclarationError(module, f"{name}: not a function")
        try:
            inspect.signature(hook).bind(*range(arity))
        except TypeError:
            raise MethodDeclarationError(module, f"{name}: must take {arity} argument(s), "
                                                  f"as Hooks.{name} says") from None


class Step(Protocol):
    def __call__(self, batch: Batch, state: MethodState) -> tuple[Tensor, dict[str, Tensor]]: ...


class AfterStep(Protocol):
    def __call__(self, state: MethodState) -> None: ...


class MakeTeacher(Protocol):
    def __call__(self, student: nn.Module) -> nn.Module: ...


class Networks(Protocol):
    def __call__(self, student: nn.Module, teacher: nn.Module | None,
                 cfg: Any) -> tuple[nn.Module, nn.Module | None]: ...


class OtherSuffix(Protocol):
    def __call__(self, cfg: Any) -> str: ...


class BeginStage(Protocol):
    def __call__(self, fs: Any, previous: dict[str, Tensor], train: Any, cfg: Any) -> None: ...


class StageLr(Protocol):
    def __call__(self, cfg: Any, stage: str) -> float: ...


def _one_network(student: nn.Module, teacher: nn.Module | None, cfg: Any) -> tuple[nn.Module, None]:
    return student, None


def _initial_lr(cfg: Any, stage: str) -> float:
    return cfg.lr


def _no_suffix(cfg: Any) -> str:
    return ""


@dataclass(frozen=True)
class Hooks:
    """What the fit loop calls of a method; a hook the module leaves out has the default. Each is
    typed by its protocol above; the registry checks on import that a module's hook takes the
    arguments the loop passes (:data:`HOOK_ARITY`), with a one-line error naming the module."""

    step: Step
    """``step(batch, state) -> (loss, logs)``: the loss of one mini-batch."""
    after_step: AfterStep | None = None
    """``after_step(state)`` after each optimizer step (MT: the EMA update)."""
    make_teacher: MakeTeacher | None = None
    """``make_teacher(student) -> network``: a second network made at each stage's start (MT's EMA
    teacher), put into ``MethodState.teacher``."""
    networks: Networks = _one_network
    """``networks(student, teacher, cfg) -> (selected, other)``: what model selection looks at,
    and the other network logged under ``other_suffix(cfg)`` (None: none)."""
    other_suffix: OtherSuffix = _no_suffix
    """``other_suffix(cfg) -> str``: the suffix of the other network's metric names."""
    begin_stage: BeginStage | None = None
    """``begin_stage(fs, previous, train, cfg)``: a stage after the first begins (LE: the previous
    stage's selected network, a state dict, scores the training clips ``train`` and enhances the
    labels of the fresh network in ``fs``)."""
    stage_lr: StageLr = _initial_lr
    """``stage_lr(cfg, stage) -> float``: the stage's initial learning rate (default: lr)."""


_PROTOCOLS = {"step": Step, "after_step": AfterStep, "make_teacher": MakeTeacher, "networks": Networks,
              "other_suffix": OtherSuffix, "begin_stage": BeginStage, "stage_lr": StageLr}
HOOK_ARITY: dict[str, int] = {name: len(inspect.signature(proto.__call__).parameters) - 1  # self
                              for name, proto in _PROTOCOLS.items()}
"""How many arguments the fit loop passes each hook: its protocol's."""


def _discover() -> dict[str, ModuleType]:
    found = [importlib.import_module(f"{__package__}.{m.name}")
             for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in SHARED]
    for module in found:
        _check_module(module)
    found.sort(key=lambda module: module.ORDER)
    for a, b in zip(found, found[1:], strict=False):
        if a.ORDER == b.ORDER:
            raise MethodDeclarationError(b, f"ORDER {b.ORDER} is {a.NAME}'s too")
    return {m.NAME: m for m in found}


_MODULES = _discover()

METHODS: tuple[str, ...] = tuple(_MODULES)
"""Every method, the paper's four first (Gururani & Lerch 2021), then the newer ones."""
METHOD_PARAMS: dict[str, tuple[str, ...]] = {m: tuple(p.name for p in _params_of(module))
                                              for m, module in _MODULES.items()}
"""The parameters each method reads beyond the common fields (its Params' fields): MLflow logs a
run's params from it (a B0 run has no gamma), the analysis leaves the others' columns empty."""


def _params() -> dict[str, Param]:
    out: dict[str, Param] = {}
    for module in _MODULES.values():
        for p in _params_of(module):
            # One declaration per name: a method that shares a parameter reuses its Param.
            if out.setdefault(p.name, p) is not p:
                raise MethodDeclarationError(module, f"Params.{p.name}: declared anew; reuse the Param "
                                                      "of the method that declared it first")
    return out


PARAMS: dict[str, Param] = _params()
"""Every method parameter by name, in the order of METHODS."""


def params_class(method: str) -> type:
    """The ``Params`` dataclass of ``method`` (an empty one for a method without parameters)."""
    return getattr(get(method), "Params", NoParams)


def make_params(method: str, given: Any = None) -> Any:
    """``method``'s Params from ``given``: None (the defaults), an instance of any method's Params,
    or a mapping of flat names (a config's YAML, Tune's config, MLflow's params). Every value named
    by a declared parameter is checked by its declaration, whatever the method (a ConfigError
    naming it); those of other methods are then left out, so that a config written when a run's
    config held every method's parameters still loads. A name no method declares is a ConfigError."""
    cls = params_class(method)
    if given is None:
        return cls()
    if dataclasses.is_dataclass(given) and not isinstance(given, type):
        given = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)}
    if not isinstance(given, Mapping):
        raise ConfigError("params", f"expected a mapping, got {type(given).__name__}")
    own, kept = METHOD_PARAMS[method], {}
    for name, v in given.items():
        p = PARAMS.get(name)
        if p is None:
            raise ConfigError(name, "unknown key")
        problem = p.problem(v)
        if problem is not None:
            raise ConfigError(name, problem)
        if name in own:
            kept[name] = v
    return cls(**kept)


def as_flat(params: Any) -> dict[str, Any]:
    """A Params instance as the flat mapping configs write (``{"gamma": 10.0, ...}``)."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


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
    """The ConfigError of an unknown method (the parameters are checked as they are made:
    :func:`make_params`)."""
    get(cfg.method)


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


__all__ = ["HOOK_ARITY", "METHODS", "METHOD_PARAMS", "PARAMS", "Hooks", "MethodDeclarationError", "NoParams",
           "as_flat", "check_config", "check_supported", "get", "hooks", "label", "make_params",
           "markdown_table", "owners", "params_class", "searched", "shares_teacher", "stages", "supports"]
