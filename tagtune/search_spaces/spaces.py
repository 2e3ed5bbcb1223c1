"""What Optuna searches, per method: small define-by-run functions, the paper's point first.

Each method module declares which of its parameters a study searches, and each such
parameter its default range and scale (tagtune.study.methods.declare.Search); every method
searches ``lr`` too. ``SPACES[method](trial, ranges)`` only calls ``trial.suggest_*`` and
returns the trial-config values it decided (optuna-examples style; no data, no training). The
one piece of arithmetic is MT's ``alpha = 1 - one_minus_alpha``: the EMA decay is searched on
a log scale of its distance to 1 (0.9, 0.99, 0.999 are equally far apart there), but the
trainable takes alpha, as in the paper.

Parameter names are plain (``lr``, ``gamma``, ``one_minus_alpha``, ``beta``, ``delta_rel``,
``margin``, ``splc_tau``, ``pbce_gamma``, ``arch``: the names a config uses), not
method-prefixed: every Optuna study of tagtune covers one cell, i.e. one method, so no
parameter is conditional inside a study, and plain names keep ``lr`` comparable across
the cells' studies in the analysis.

Ranges come from :class:`Ranges` (defaults below) or a YAML file (:func:`load_ranges`,
example with every option in ``default.yaml`` next to this file, generated from the methods'
declarations by :func:`default_ranges_yaml`). The network (``arch``:
residual or paper) is searched only where the ranges list the choices; the trial config
then carries ``arch``, which :func:`tagtune.study.folder.train_config` puts into
``model.arch``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from tagtune.study.config import ARCHS, PAPER_LR, PRESETS, ConfigError, paper_lr
from tagtune.study.methods.declare import Bounds, Param, Search
from tagtune.study.methods.registry import METHODS, get, searched

DEFAULT_RANGES_FILE = Path(__file__).with_name("default.yaml")
LR = Search(1e-4, 1e-2, log=True, bounds=Bounds(0, low_open=True))
"""Adam's learning rate: searched for every method, log scale."""
# Every searched parameter of every method, once, by its Optuna name (in METHODS' order).
_SEARCHED: dict[str, Param] = {p.search_name: p for m in METHODS for p in searched(m)}


def _check_ranges(self) -> None:
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
        bounds = _natural(f.name)
        if not bounds.holds(low, high):
            raise ConfigError(f.name, f"must be {bounds.words('within')}, got [{low}, {high}]", "ranges")
        object.__setattr__(self, f.name, (low, high))


def _natural(name: str) -> Bounds:
    """The valid values of a searched quantity (lr's, or a parameter's as its method declares)."""
    return LR.bounds if name == "lr" else _SEARCHED[name].search_bounds


Ranges = make_dataclass(
    "Ranges",
    [("lr", tuple[float, float], field(default=(LR.low, LR.high))),
     *[(name, tuple[float, float], field(default=(p.search.low, p.search.high)))
       for name, p in _SEARCHED.items()],
     ("arch", tuple[str, ...], field(default=()))],
    frozen=True, namespace={"__post_init__": _check_ranges, "__module__": __name__},
)
Ranges.__doc__ = """Search ranges, each ``(low, high)`` with low < high; validated on construction.

``lr`` (every method, log scale), then each method's searched parameters by their Optuna
names (see the declarations in tagtune.study.methods and ``default.yaml``), and ``arch``: the
networks to choose from (categorical, every method), e.g. (residual, paper); empty: not
searched, every trial runs the study's model.arch."""


def _number(v: float, log: bool) -> str:
    # YAML-safe: a log-scale end in exponent form with a dot (1.0e-4; plain YAML reads 1e-4 as a string)
    if log:
        mantissa, exponent = f"{v:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return repr(float(v))


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=98, initial_indent="  # ", subsequent_indent="  # ")


_HEADER = """\
# Search ranges of tagtune's Optuna study: an example override file, listing every option.
# Load it with tagtune.search_spaces.load_ranges(path) (or pass it to the study's CLI).
# Generated from the methods' declarations (tagtune.search_spaces.default_ranges_yaml; a test
# keeps this file equal to it): edit a method module, not this file.
#
# Only the `search:` mapping is read; any key left out keeps its default (the values
# below are the defaults). Each value is [low, high] with low < high. Write floats with a
# dot (1.0e-4): plain YAML reads 1e-4 as a string, which tagtune also accepts.
#
# The paper's point (Gururani & Lerch 2021) is always each study's first trial:
#   lr as its run scripts had it -- OpenMIC: b0/b1 5e-4, le/mt 1e-3; SONYC-UST: 1e-3 for all;
#   OpenMIC gamma 10, alpha 0.999, beta 3; SONYC-UST gamma 95, alpha 0.99, beta 3; the newer
#   methods ({newer}) lr 1e-3 and their authors' values
#   (the defaults of their parameters).
# If your ranges exclude it, it is clipped to the nearest end of the range.
search:
  # Adam learning rate; every method; log scale; {lr_valid}.
  lr: [{lr_low}, {lr_high}]
"""


def default_ranges_yaml() -> str:
    """The text of ``default.yaml``, from the declarations: ``lr``, then each searched parameter
    of every method (who searches it, what it is, its scale and valid values, its default range),
    then ``arch``."""
    out = _HEADER.format(newer=", ".join(METHODS[4:]), lr_valid=LR.bounds.words("within"),
                         lr_low=_number(LR.low, True), lr_high=_number(LR.high, True)).splitlines()
    for name, p in _SEARCHED.items():
        who = [m for m in METHODS if p in searched(m)]
        whom = f"{who[0]} only" if len(who) == 1 else f"{', '.join(who[:-1])} and {who[-1]}"
        what = (f"1 - {p.name}, where {p.name} is the {p.help} ({p.name} = 1 - this value)"
                if p.search.complement else p.help)
        scale = "log scale" if p.search.log else "linear"
        out += _comment(f"{whom}: {what}; {scale}; {p.search_bounds.words('within')}; the default "
                        f"{_number(p.default, False) if p.default is not None else 'none'}.")
        low, high = (_number(v, p.search.log) for v in (p.search.low, p.search.high))
        out.append(f"  {name}: [{low}, {high}]")
    out += _comment(f"every method: the networks to choose from (categorical), among {', '.join(ARCHS)} "
                    "(paper needs model.hidden = the input's F). Empty: not searched (the study's "
                    "model.arch); the paper point then tries paper first.")
    out.append("  arch: []")
    return "\n".join(out) + "\n"


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


def _space(method: str) -> Callable[[optuna.Trial, Ranges], dict[str, Any]]:
    own = searched(method)

    def space(trial: optuna.Trial, ranges: Ranges) -> dict[str, Any]:
        config: dict[str, Any] = {"lr": trial.suggest_float("lr", *ranges.lr, log=True)}
        for p in own:
            value = trial.suggest_float(p.search_name, *getattr(ranges, p.search_name), log=p.search.log)
            config[p.name] = 1.0 - value if p.search.complement else value
        return {**config, **_network(trial, ranges)}

    space.__name__ = space.__qualname__ = f"space_{method}"
    space.__doc__ = (f"{method}: lr, {', '.join(p.search_name for p in own) or 'nothing else'} "
                     "(and the network, if searched).")
    return space


SPACES: dict[str, Callable[[optuna.Trial, Ranges], dict[str, Any]]] = {m: _space(m) for m in METHODS}
"""Each method's search space, by method name: lr, then its declared searched parameters."""


def paper_point(method: str, preset: str, ranges: Ranges | None = None) -> dict[str, Any]:
    """The paper's settings for ``method`` on dataset ``preset``, as Optuna parameters.

    Enqueued as every study's first trial (warm start). The lr is the one the paper's run
    script for that method and dataset used (:data:`tagtune.study.config.PAPER_LR`). A value
    outside ``ranges`` is clipped to the nearest end of its range: the user's ranges win, and
    an enqueued value outside its distribution would make Optuna warn and sample outside the
    search space. Where the network is searched, the point has the paper's (or, if the
    choices leave it out, the first choice).
    """
    get(method)  # an unknown method is a ConfigError
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    ranges = ranges or Ranges()
    paper = PRESETS[preset]
    point: dict[str, Any] = {"lr": paper_lr(preset, method)}
    for p in searched(method):
        # The preset's value (the paper's, per dataset), else the authors' (the declared default).
        value = float(paper.get(p.name, p.default))
        # Rounded so the study stores 0.001, not 0.0010000000000000009; 1 - it is alpha again.
        point[p.search_name] = round(1.0 - value, 12) if p.search.complement else value
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


__all__ = ["DEFAULT_RANGES_FILE", "LR", "PAPER_LR", "SPACES", "Ranges", "default_ranges_yaml", "load_ranges",
           "paper_point"]
