"""Run configuration: frozen dataclasses, validated once on construction.

Defaults are the paper's OpenMIC settings (Gururani & Lerch 2021); ``PRESETS``
holds the per-dataset ones. A config round-trips through a plain dict (YAML,
Ray Tune's config, MLflow params) with :func:`to_dict` / :func:`from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tagtune.study import objective

# The layer below (torch-free, free of the methods), re-exported: these names have always been
# read from here.
from tagtune.study.configbase import (
    ARCHS,
    DEFAULT_ARCH,
    DEFAULT_PRECISION,
    DEVICES,
    PRECISIONS,
    PRESETS,
    ModelConfig,
    _check,
)
from tagtune.study.errors import ConfigError

# The methods' declarations: the registry imports the method modules, which read only the layer
# below (configbase, errors) and import torch on first use, so this import makes no cycle and
# loads no torch.
from tagtune.study.methods.registry import (
    METHOD_PARAMS,
    METHODS,
    PARAMS,
    as_flat,
    check_config,
    get,
    make_params,
    owners,
)


def applies(method: str, name: str) -> bool:
    """Whether TrainConfig field ``name`` means something for ``method``: a common field, or one of
    the method's own parameters (METHOD_PARAMS, declared in its module)."""
    found = owners(name)
    return not found or method in found


def typed(name: str, kind: str, v: Any, where: str = "config") -> Any:
    """``v`` as a value of ``kind`` (int, float, bool, str or dict) -- YAML's 3.0 taken for an
    int, 3 for a float -- else a ConfigError naming the field."""
    if kind == "int" and isinstance(v, float) and v.is_integer():
        v = int(v)
    number = isinstance(v, int | float) and not isinstance(v, bool)
    ok, problem = {"int": (number and isinstance(v, int), "expected an integer"),
                   "float": (number, "expected a number"),
                   "bool": (isinstance(v, bool), "must be true or false"),
                   "str": (isinstance(v, str), "expected a string"),
                   "dict": (isinstance(v, dict), "expected a mapping")}[kind]
    if not ok:
        raise ConfigError(name, f"{problem}, got {v!r}", where=where)
    return float(v) if kind == "float" else v


def output_dir(path: str | Path, field: str = "out") -> Path:
    """``path`` as a directory to write results into, made if missing; else a ConfigError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(field, "exists and is not a directory", where=str(path)) from None
    except OSError as e:
        raise ConfigError(field, f"cannot make the directory ({e.strerror})", where=str(path)) from None
    return path


@dataclass(frozen=True, init=False)
class TrainConfig:
    """One training run of one method: the fields every method reads, and ``params``, the method's
    own (constructed by name: ``TrainConfig(method="le", gamma=50.0)``, as configs name them)."""

    method: str = "b1"
    """One of METHODS: b0 (missing = negative), b1 (masked loss), le (label enhancing), mt (mean
    teacher) and the newer ones; each a module of tagtune.study.methods."""
    lr: float = 1e-3
    """Initial Adam learning rate (also the LE student's: it starts fresh)."""
    weight_decay: float = 1e-5
    """Adam weight decay (L2), as in the paper."""
    batch_size: int = 64
    """Clips per optimizer step."""
    epochs: int = 100
    """Epochs per training stage (LE: per stage, teacher and student)."""
    lr_decay_epochs: tuple[int, ...] = (30, 60, 90)
    """Epochs at which the learning rate is multiplied by lr_decay (the paper: 30, 60, 90)."""
    lr_decay: float = 0.5
    """Step-decay factor."""
    patience: int | None = None
    """Stop a stage after this many epochs without a better objective (None = never)."""
    objective: str = "val/loss"
    """What model selection keeps the best epoch by: val/loss (minimised), val/auprc_macro or
    val/f1_macro_tuned (maximised); see tagtune.study.objective. val/loss here, where every run
    and checkpoint before the setting had it; a study passes its own (a new study's default is
    tagtune.study.objective.DEFAULT)."""
    params: Any = None
    """The method's own parameters: an instance of its module's ``Params`` dataclass
    (tagtune.study.methods.<name>; e.g. LE's gamma, MT's alpha). A mapping of them, or None for
    their defaults, becomes one on construction. Configs, CLI flags, MLflow params and exported
    YAML name them flat, beside the common fields (:func:`to_dict`, :func:`from_dict`)."""
    missing: float = 0.0
    """Proportion of observed training labels removed before training (the paper's Fig. 5)."""
    seed: int = 0
    """Seeds the model, the dropout noise, the batch order and the label removal."""
    threads: int = 1
    """torch intra-op threads (the CPU budget of the run)."""
    device: str = "cpu"
    """Where to train: cpu, cuda (in a study: the GPU Ray assigned the trial), or auto (the GPU
    when torch sees one). Checkpoints resume on either; see tagtune.study.nn.device. The default
    keeps a run where it always was: an existing script or bench on a GPU node still uses the CPU."""
    precision: str = DEFAULT_PRECISION
    """auto (bf16 where the CPU or GPU has it natively, else fp32), bf16 (mixed: matrix products in
    bf16; weights, BatchNorm, losses, metrics fp32) or fp32; see tagtune.study.nn.precision. The
    default is auto since the science check (docs/precision.md); fp32 reproduces runs from before.
    A checkpoint resumes in either."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms for the run: GPU results repeat bitwise, slower (the
    CPU path is deterministic either way)."""
    model: ModelConfig = field(default_factory=ModelConfig)

    def __init__(self, **values: Any) -> None:
        # Written out, not the dataclass's: a method's parameters are taken by name too, flat
        # (``gamma=50.0``), beside or instead of ``params`` -- what dataclasses.replace passes.
        flat = {k: values.pop(k) for k in list(values) if k in PARAMS}
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"TrainConfig.__init__() got an unexpected keyword argument {unknown[0]!r}")
        for name, f in known.items():
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(self, name, values.get(name, default))
        if flat:
            params = self.params
            given = as_flat(params) if dataclasses.is_dataclass(params) else dict(params or {})
            object.__setattr__(self, "params", {**given, **flat})
        self.__post_init__()

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", from_dict(ModelConfig, self.model, "model."))
        object.__setattr__(self, "lr_decay_epochs", tuple(int(e) for e in self.lr_decay_epochs))
        check_config(self)  # the method's name, then its parameters, each by its declared range
        object.__setattr__(self, "params", make_params(self.method, self.params))
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        try:
            objective.check(self.objective)
        except ValueError as e:
            raise ConfigError("objective", str(e).split(": ", 1)[1]) from None
        _check(self.patience is None or self.patience >= 1, "patience", f"must be >= 1, got {self.patience}")
        check_proportion(self.missing)
        _check(self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        _check(self.device in DEVICES, "device",
               f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        _check(self.precision in PRECISIONS, "precision",
               f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")


PAPER_LR: dict[str, dict[str, float]] = {
    # Adam's lr in the paper's run scripts (SiddGururani/audio_missing_labels, src/run_*.py at
    # its last commit): OpenMIC, run_baseline.py 5e-4 (B0 and B1), run_labelpruning.py and
    # run_mean_teacher.py 1e-3; SONYC-UST with labels dropped, the *_droplabels_openL3.py
    # scripts, 1e-3 for every method.
    "openmic": {"b0": 5e-4, "b1": 5e-4, "le": 1e-3, "mt": 1e-3},
    "sonyc": {"b0": 1e-3, "b1": 1e-3, "le": 1e-3, "mt": 1e-3},
}
NEWER_LR = 1e-3
"""The lr of the methods beyond the paper, on either dataset: its LE/MT lr. Their authors' lrs were
tuned for image CNNs fine-tuned with SGD or OneCycle, not for this small network with Adam."""


STACK_SAME = ("method", "model", "batch_size", "epochs", "device", "precision", "deterministic")
"""Config fields the members of one fused stack share: they fix the shapes and the schedule of a
step (tagtune.study.fit.stacked)."""


def stack_key(cfg: TrainConfig) -> tuple:
    """What a stack's members share (:data:`STACK_SAME`), as a key to deal trials to stacks by: a
    cell whose study searches the network (``arch``, ``layers`` ...) fills one stack per network.
    Here, torch-free: a fused trial's process (it only waits for its stack) computes it."""
    return tuple(getattr(cfg, f) for f in STACK_SAME)


def paper_lr(preset: str, method: str) -> float:
    """The paper's learning rate for ``method`` on the dataset of ``preset`` (openmic[-paper],
    sonyc[-paper])."""
    dataset = preset.removesuffix("-paper")
    if dataset not in PAPER_LR:
        raise ConfigError("preset", f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    get(method)  # an unknown method is a ConfigError
    return PAPER_LR[dataset].get(method, NEWER_LR)


def preset_config(preset: str, method: str | None) -> dict[str, Any]:
    """The values ``preset`` sets for ``method``: PRESETS[preset], and for a ``-paper`` preset
    the method's paper lr (LE's teacher stage runs at that lr too, as in its script);
    ``method`` may be None for the method-free part."""
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    d = {**PRESETS[preset], "model": dict(PRESETS[preset]["model"])}
    if preset.endswith("-paper") and method is not None:
        d["lr"] = paper_lr(preset, method)
    return d


def check_proportion(p: float, field: str = "missing", where: str = "config") -> None:
    """The one check of a missing-label proportion (a run's, a study's, a cell's): in [0, 1);
    1 would remove every observed label."""
    if not 0 <= p < 1:
        raise ConfigError(field, f"must be in [0, 1), got {p}", where=where)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (lists for tuples), ready for YAML / JSON: the method's parameters flat,
    where the config's fields were (``{"method": "le", ..., "gamma": 10.0, ..., "missing": ...}``)."""
    d: dict[str, Any] = {}
    for f in fields(cfg):
        if f.name == "params":
            d.update(as_flat(cfg.params))
        elif f.name == "model":
            d["model"] = asdict(cfg.model)
        else:
            d[f.name] = getattr(cfg, f.name)
    d["lr_decay_epochs"] = list(cfg.lr_decay_epochs)
    return d


def from_dict(cls, d: dict[str, Any], prefix: str = ""):
    """Build ``cls`` from a dict; an unknown key or a wrong type is a ConfigError."""
    if not isinstance(d, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a mapping, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    params: dict[str, Any] = {}
    if "params" in known:  # TrainConfig: the method's parameters, flat beside its fields
        params = {k: _typed_param(prefix + k, v) for k, v in d.items() if k in PARAMS}
        d = {k: v for k, v in d.items() if k not in PARAMS}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(prefix + unknown[0], "unknown key")
    kwargs: dict[str, Any] = {"params": params} if params else {}
    for k, v in d.items():
        f = known[k]
        default = f.default if f.default is not MISSING else None
        if k == "model":
            v = from_dict(ModelConfig, v or {}, "model.")
        elif isinstance(default, bool):
            v = typed(prefix + k, "bool", v)
        elif isinstance(v, bool):
            pass
        elif isinstance(default, int):
            v = typed(prefix + k, "int", v)
        elif isinstance(default, float):
            v = typed(prefix + k, "float", v)
        elif isinstance(default, str):
            v = typed(prefix + k, "str", v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(prefix + e.field, str(e).split(": ", 2)[-1]) from None
    except TypeError as e:
        raise ConfigError(prefix.rstrip(".") or "config", str(e)) from None


def _typed_param(name: str, v: Any) -> Any:
    p = PARAMS[name.rsplit(".", 1)[-1]]
    if v is None and p.optional:
        return v
    return typed(name, {bool: "bool", int: "int", float: "float", str: "str"}[p.kind], v)


def merge(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    """``cfg`` with ``overrides`` applied (``model`` may be a partial dict), re-validated."""
    d = to_dict(cfg)
    model = overrides.pop("model", None)
    if model:
        d["model"] = {**d["model"], **(model if isinstance(model, dict) else asdict(model))}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(TrainConfig, d)


__all__ = ["ARCHS", "DEFAULT_ARCH", "DEFAULT_PRECISION", "DEVICES", "METHODS", "METHOD_PARAMS", "NEWER_LR",
           "PARAMS", "PAPER_LR", "PRECISIONS", "PRESETS", "STACK_SAME",
           "ConfigError", "ModelConfig", "TrainConfig", "applies", "from_dict", "merge", "output_dir",
           "stack_key",
           "paper_lr", "preset_config", "replace", "to_dict", "typed"]
