"""What Optuna searches, per method: small define-by-run functions, the paper's point first.

Each ``space_<method>(trial, ranges)`` only calls ``trial.suggest_*`` and returns the
trial-config values it decided (optuna-examples style; no data, no training). The one
piece of arithmetic is MT's ``alpha = 1 - one_minus_alpha``: the EMA decay is searched on
a log scale of its distance to 1 (0.9, 0.99, 0.999 are equally far apart there), but the
trainable takes alpha, as in the paper.

Parameter names are plain (``lr``, ``gamma``, ``one_minus_alpha``, ``beta``, ``delta_rel``,
``margin``, ``splc_tau``, ``pbce_gamma``, ``arch``: the TrainConfig field names), not
method-prefixed: every Optuna study of tagtune covers one cell, i.e. one method, so no
parameter is conditional inside a study, and plain names keep ``lr`` comparable across
the cells' studies in the analysis.

Ranges come from :class:`Ranges` (defaults below) or a YAML file (:func:`load_ranges`,
example with every option in ``default.yaml`` next to this file). The network (``arch``:
residual or paper) is searched only where the ranges list the choices; the trial config
then carries ``arch``, which :func:`tagtune.study.trainable.train_config` puts into
``model.arch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from tagtune.study.config import ARCHS, METHODS, PAPER_LR, PRESETS, ConfigError, TrainConfig, paper_lr

DEFAULT_RANGES_FILE = Path(__file__).with_name("default.yaml")
AUTHORS: dict[str, float] = {f.name: f.default for f in fields(TrainConfig)
                             if f.name in ("delta_rel", "margin", "splc_tau", "pbce_gamma")}
"""The newer methods' authors' values, enqueued first: LL-R delta_rel 0.2% a epoch (Kim et al.
2022), Hill's margin 1 (Zhang et al. 2021), SPLC's tau 0.6, partial BCE's gamma 1 (Durand et al.
2019)."""
_SEARCHED = {"llr": ("delta_rel",), "hill": ("margin",), "splc": ("splc_tau",), "pbce": ("pbce_gamma",)}


@dataclass(frozen=True)
class Ranges:
    """Search ranges, each ``(low, high)`` with low < high; validated on construction."""

    lr: tuple[float, float] = (1e-4, 1e-2)
    """Adam learning rate, log scale, every method; low > 0."""
    gamma: tuple[float, float] = (1.0, 99.0)
    """LE: percentile of the teacher's scores on missing labels, linear, within [0, 100]."""
    one_minus_alpha: tuple[float, float] = (1e-4, 1e-1)
    """MT: 1 - alpha (alpha = EMA decay of the teacher), log scale, within (0, 1]."""
    beta: tuple[float, float] = (0.0, 10.0)
    """MT, LE+MT: weight of the consistency loss, linear, low >= 0."""
    delta_rel: tuple[float, float] = (1e-4, 1e-2)
    """LL-R: growth per epoch of the rejected share, log scale, within (0, 1]."""
    margin: tuple[float, float] = (0.5, 1.0)
    """Hill, SPLC: focal margin, linear, low >= 0 (the authors recommend 0.5-1)."""
    splc_tau: tuple[float, float] = (0.5, 0.95)
    """SPLC: score above which a missing label is taken for a positive, linear, within (0, 1)."""
    pbce_gamma: tuple[float, float] = (-1.0, 3.0)
    """Partial BCE: exponent of the normalisation g(p_y), linear."""
    arch: tuple[str, ...] = ()
    """Networks to choose from (categorical, every method), e.g. (residual, paper); empty: not
    searched, every trial runs the study's model.arch."""

    def __post_init__(self) -> None:
        arch = self.arch
        if not isinstance(arch, list | tuple) or not all(isinstance(a, str) for a in arch):
            raise ConfigError("arch", f"expected a list of network names, got {arch!r}", "ranges")
        unknown = [a for a in arch if a not in ARCHS]
        if unknown or len(set(arch)) != len(arch):
            raise ConfigError("arch", f"expected distinct names among {', '.join(ARCHS)}, got {list(arch)}",
                              "ranges")
        object.__setattr__(self, "arch", tuple(arch))
        for f in fields(self):
            if f.name == "arch":
                continue
            low, high = _pair(getattr(self, f.name), f.name)
            if not low < high:
                raise ConfigError(f.name, f"low must be < high, got [{low}, {high}]", "ranges")
            ok, natural = _NATURAL[f.name](low, high)
            if not ok:
                raise ConfigError(f.name, f"must be {natural}, got [{low}, {high}]", "ranges")
            object.__setattr__(self, f.name, (low, high))


# The natural bounds of each parameter: (check, the words for the message).
_NATURAL: dict[str, Callable[[float, float], tuple[bool, str]]] = {
    "lr": lambda lo, hi: (lo > 0, "> 0"),
    "gamma": lambda lo, hi: (0 <= lo and hi <= 100, "within [0, 100]"),
    "one_minus_alpha": lambda lo, hi: (0 < lo and hi <= 1, "within (0, 1]"),
    "beta": lambda lo, hi: (lo >= 0, ">= 0"),
    "delta_rel": lambda lo, hi: (0 < lo and hi <= 1, "within (0, 1]"),
    "margin": lambda lo, hi: (lo >= 0, ">= 0"),
    "splc_tau": lambda lo, hi: (0 < lo and hi < 1, "within (0, 1)"),
    "pbce_gamma": lambda lo, hi: (True, "finite"),
}


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(name, f"expected a pair [low, high], got {value!r}", "ranges")
    out = []
    for v in value:
        # PyYAML reads 1e-4 (no dot) as a string: accept numeric strings, never booleans.
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(name, f"expected two finite numbers, got {value!r}", "ranges")
        out.append(float(v))
    return out[0], out[1]


def _network(trial: optuna.Trial, ranges: Ranges) -> dict[str, str]:
    """The network, where the ranges list choices (asked last: the floats keep their order)."""
    return {"arch": trial.suggest_categorical("arch", list(ranges.arch))} if ranges.arch else {}


def space_b0(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """B0 (missing = negative): only the learning rate (and the network, if searched)."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True), **_network(trial, ranges)}


def space_b1(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """B1 (masked loss): only the learning rate (and the network, if searched)."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True), **_network(trial, ranges)}


def space_le(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """LE (label enhancing, Fonseca et al. 2020): learning rate and percentile gamma."""
    return {
        "lr": trial.suggest_float("lr", *ranges.lr, log=True),
        "gamma": trial.suggest_float("gamma", *ranges.gamma),
        **_network(trial, ranges),
    }


def space_mt(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """MT (mean teacher, Tarvainen & Valpola 2017): learning rate, EMA decay, consistency weight."""
    lr = trial.suggest_float("lr", *ranges.lr, log=True)
    one_minus_alpha = trial.suggest_float("one_minus_alpha", *ranges.one_minus_alpha, log=True)
    beta = trial.suggest_float("beta", *ranges.beta)
    return {"lr": lr, "alpha": 1.0 - one_minus_alpha, "beta": beta, **_network(trial, ranges)}


def space_lemt(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """LE + MT: learning rate, LE's percentile gamma, MT's EMA decay and consistency weight."""
    lr = trial.suggest_float("lr", *ranges.lr, log=True)
    gamma = trial.suggest_float("gamma", *ranges.gamma)
    one_minus_alpha = trial.suggest_float("one_minus_alpha", *ranges.one_minus_alpha, log=True)
    beta = trial.suggest_float("beta", *ranges.beta)
    return {"lr": lr, "gamma": gamma, "alpha": 1.0 - one_minus_alpha, "beta": beta,
            **_network(trial, ranges)}


def space_llr(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """LL-R (Kim et al. 2022): learning rate and the rejection rate's growth delta_rel."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True),
            "delta_rel": trial.suggest_float("delta_rel", *ranges.delta_rel, log=True),
            **_network(trial, ranges)}


def space_hill(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """Hill (Zhang et al. 2021): learning rate and margin (lambda and gamma as the authors left them)."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True),
            "margin": trial.suggest_float("margin", *ranges.margin), **_network(trial, ranges)}


def space_splc(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """SPLC (Zhang et al. 2021): learning rate and the relabelling threshold tau."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True),
            "splc_tau": trial.suggest_float("splc_tau", *ranges.splc_tau), **_network(trial, ranges)}


def space_pbce(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """Partial BCE (Durand et al. 2019): learning rate and the normalisation's exponent gamma."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True),
            "pbce_gamma": trial.suggest_float("pbce_gamma", *ranges.pbce_gamma), **_network(trial, ranges)}


def space_wan(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """WAN (Cole et al. 2021): only the learning rate (the weight 1 / (C - 1) is the method)."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True), **_network(trial, ranges)}


def space_epr(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
    """EPR (Cole et al. 2021): only the learning rate (k comes from the data, as for its authors)."""
    return {"lr": trial.suggest_float("lr", *ranges.lr, log=True), **_network(trial, ranges)}


SPACES: dict[str, Callable[[optuna.Trial, Ranges], dict[str, Any]]] = {
    "b0": space_b0, "b1": space_b1, "le": space_le, "mt": space_mt, "lemt": space_lemt,
    "llr": space_llr, "hill": space_hill, "splc": space_splc, "pbce": space_pbce,
    "wan": space_wan, "epr": space_epr,
}
assert set(SPACES) == set(METHODS)


def paper_point(method: str, preset: str, ranges: Ranges | None = None) -> dict[str, Any]:
    """The paper's settings for ``method`` on dataset ``preset``, as Optuna parameters.

    Enqueued as every study's first trial (warm start). The lr is the one the paper's run
    script for that method and dataset used (:data:`tagtune.study.config.PAPER_LR`). A value
    outside ``ranges`` is clipped to the nearest end of its range: the user's ranges win, and
    an enqueued value outside its distribution would make Optuna warn and sample outside the
    search space. Where the network is searched, the point has the paper's (or, if the
    choices leave it out, the first choice).
    """
    if method not in SPACES:
        raise ConfigError("method", f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    ranges = ranges or Ranges()
    paper = PRESETS[preset]
    point: dict[str, Any] = {"lr": paper_lr(preset, method)}
    if method in ("le", "lemt"):
        point["gamma"] = float(paper["gamma"])
    if method in ("mt", "lemt"):
        # Rounded so the study stores 0.001, not 0.0010000000000000009; 1 - it is alpha again.
        point["one_minus_alpha"] = round(1.0 - float(paper["alpha"]), 12)
        point["beta"] = float(paper["beta"])
    # The newer methods: their authors' recommended values (TrainConfig's defaults).
    point |= {k: AUTHORS[k] for k in _SEARCHED.get(method, ())}
    point = {k: min(max(v, getattr(ranges, k)[0]), getattr(ranges, k)[1]) for k, v in point.items()}
    if ranges.arch:
        point["arch"] = "paper" if "paper" in ranges.arch else ranges.arch[0]
    return point


def load_ranges(path: str | Path) -> Ranges:
    """Ranges from the ``search:`` mapping of a YAML file; any key left out keeps its default.

    Other top-level keys are ignored, so the file may be a larger study config. Every
    problem is a one-line ConfigError naming the file and the key.
    """
    where = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError("search", f"cannot read: {e.strerror or e}", where) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("search", f"not valid YAML{at}", where) from None
    if not isinstance(doc, dict) or "search" not in doc:
        raise ConfigError("search", "no 'search:' mapping in this file", where)
    search = doc["search"] or {}
    if not isinstance(search, dict):
        raise ConfigError("search", f"expected a mapping, got {type(search).__name__}", where)
    known = [f.name for f in fields(Ranges)]
    for key in search:
        if key not in known:
            raise ConfigError(f"search.{key}", f"unknown key; use one of {', '.join(known)}", where)
    try:
        return replace(Ranges(), **search)
    except ConfigError as e:
        raise ConfigError(f"search.{e.field}", str(e).split(": ", 2)[-1], where) from None


__all__ = [
    "DEFAULT_RANGES_FILE", "PAPER_LR", "SPACES", "Ranges", "load_ranges", "paper_point",
    "space_b0", "space_b1", "space_epr", "space_hill", "space_le", "space_lemt", "space_llr",
    "space_mt", "space_pbce", "space_splc", "space_wan",
]
