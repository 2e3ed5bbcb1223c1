"""A study folder's contract, in one place: what ``launch`` writes and ``analysis`` reads.

A study lives in ``STORAGE/NAME/``::

    study.yaml            the settings (:class:`StudySettings`; what resume and the analysis read)
    search/               Ray Tune experiment of the search phase (all cells together)
    replicate/            Ray Tune experiment of the replicate phase
                          (a trial's directory in either: ``<cell stem>_<trial id>``, holding
                          params.json, its trial config, and result.json)
    best.json             best config and validation score per cell
    optuna-journal.log    each cell's Optuna study (name = cell id, e.g. ``mt@0.40``), an Optuna
                          journal file (``optuna.db``, SQLite, in a study of an earlier tagtune)
    summary.json          budgets per cell, replicate test metrics, MLflow location
    mlflow.db             the MLflow store (unless mlflow_uri is given), mlartifacts/
    mlflow-journal.jsonl  every tracking event, replayable (tagtune.launch.tracking)
    study.log             Ray's, Tune's, Optuna's and MLflow's log lines (tagtune.launch.display)
    le-teachers/          LE's stage-1 teachers, one per key (tagtune.study.fit.teachers)
    ui.log                the UI servers' output (tagtune.launch.ui)
    analysis/             what ``tagtune analyze`` wrote (its default output)
    rounds.json           an extended study's rounds (``tagtune study extend``): when each
                          began and ended, what it added or grew; round k > 1 runs in
                          ``search.k/`` and ``replicate.k/``

A cell is one method at one proportion of training labels removed; its id (``mt@0.40``)
names its Optuna study, its MLflow parent run and the ``cell`` key of its trials' configs.

In ``study``, free of Ray, so that both ``launch`` and ``analysis`` read the folder through it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from tagtune.study import objective as objectives
from tagtune.study.config import (
    METHODS,
    PRESETS,
    ConfigError,
    TrainConfig,
    check_proportion,
    from_dict,
    typed,
)
from tagtune.study.errors import first_line

SETTINGS = "study.yaml"
SEARCH, REPLICATE = "search", "replicate"  # the phases, each a Ray Tune experiment directory
PHASES = (SEARCH, REPLICATE)
RERANK = "rerank"
RERANK_SEED = 1000
"""The re-rank's seeds are seed + RERANK_SEED + j: distinct from every replicate's (seed + r)."""
"""The re-rank phase's experiment (setting ``rerank``; tagtune.launch.rerank): not one of PHASES,
which every study has and the analysis reads."""
BEST = "best.json"
SUMMARY = "summary.json"
OPTUNA_JOURNAL = "optuna-journal.log"  # one Optuna study per cell, named by the cell id
OPTUNA_DB = "optuna.db"  # the same as SQLite, as an earlier tagtune wrote it
MLFLOW_DB = "mlflow.db"
ARTIFACTS = "mlartifacts"
JOURNAL = "mlflow-journal.jsonl"
TEACHERS = "le-teachers"
LOG_FILE = "study.log"
ANALYSIS = "analysis"
ROUNDS = "rounds.json"
# Keys of a trial config (a trial's params.json) that are study bookkeeping, not TrainConfig's.
STUDY_KEYS = ("cell", "phase", "checkpoint_every", "checkpoint_s", "one_minus_alpha", "replicate",
              "optuna_trial", "reused_checkpoint", "point", "rerank_of")


def optuna_store(study_dir: str | Path) -> Path | None:
    """The study's exported Optuna studies: the journal file, or an earlier tagtune's SQLite file;
    None before the search phase has ended. (An Optuna journal: written 30x faster than SQLite,
    ~0.5 ms a trial against ~13 ms, at the end of every search.)"""
    for name in (OPTUNA_JOURNAL, OPTUNA_DB):
        if (Path(study_dir) / name).is_file():
            return Path(study_dir) / name
    return None


def proportion_text(proportion: float) -> str:
    """A proportion as a cell id writes it: two decimals (``0.40``)."""
    return f"{proportion:.2f}"


def cell_id(method: str, proportion: float) -> str:
    """The id of a cell, e.g. ``mt@0.40``."""
    return f"{method}@{proportion_text(proportion)}"


def parse_cell(cell: str) -> tuple[str, float]:
    """(method, proportion) of a cell id."""
    method, _, proportion = cell.partition("@")
    return method, float(proportion)


def cell_stem(cell: str) -> str:
    """A cell id as the start of a file name (``mt_0.40``): no ``@``."""
    return cell.replace("@", "_")


def trial_dirname(cell: str, trial_id: str) -> str:
    """A trial's directory name in its phase directory."""
    return f"{cell_stem(cell)}_{trial_id}"


def trial_id_of(dirname: str) -> str:
    """The trial id in a trial's directory name (see :func:`trial_dirname`)."""
    return dirname.rsplit("_", 1)[-1]


def phase_dirname(phase: str, round_: int = 1) -> str:
    """The Tune experiment directory of ``phase`` in round ``round_`` (``search``, ``search.2``):
    an extension runs in new experiments, so Tune never has to restore a finished one."""
    return phase if round_ == 1 else f"{phase}.{round_}"


def read_rounds(study_dir: str | Path) -> list[dict[str, Any]]:
    """The study's rounds (rounds.json); empty for a study never extended (one round)."""
    import json

    path = Path(study_dir) / ROUNDS
    if not path.is_file():
        return []
    try:
        rounds = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(ROUNDS, f"unreadable ({first_line(e, None)})", where=str(study_dir)) from None
    return rounds if isinstance(rounds, list) else []


def round_count(study_dir: str | Path) -> int:
    """How many rounds the study has begun (1 for a study never extended)."""
    return max(1, len(read_rounds(study_dir)))


def phase_dirs(study_dir: str | Path, phase: str | None = None) -> list[tuple[str, Path]]:
    """(phase, directory) of every round's Tune experiments, in order; only ``phase`` if given."""
    n = round_count(study_dir)
    return [(p, Path(study_dir) / phase_dirname(p, r)) for r in range(1, n + 1) for p in PHASES
            if phase in (None, p)]


def superseded(study_dir: str | Path) -> set[str]:
    """Replicate trials a later round re-ran for a new best config: kept, but not counted."""
    return {tid for r in read_rounds(study_dir) for tid in r.get("superseded", [])}


def tracking_uri(study_dir: Path, mlflow_uri: str | None) -> str:
    """The study's tracking URI: the one given at launch, else its own SQLite store."""
    return mlflow_uri or f"sqlite:///{Path(study_dir) / MLFLOW_DB}"


def train_config(config: dict[str, Any]) -> TrainConfig:
    """The validated TrainConfig inside a trial config (study keys removed; a searched
    network, the flat Optuna parameter ``arch``, put into ``model.arch``)."""
    d = {k: v for k, v in config.items() if k not in STUDY_KEYS}
    if "arch" in d:
        model = d.get("model") or {}
        d["model"] = {**(model if isinstance(model, dict) else {}), "arch": d.pop("arch")}
    return from_dict(TrainConfig, d)


DEFAULT_MISSING = (0.0, 0.1, 0.2, 0.4, 0.8)
DEFAULT_GRACE_PERIOD = 5
FUSE_ON_GPU = 16
"""``fuse: auto`` on a GPU: trials a stack. Unmeasured (no GPU has run tagtune yet): bench_fused.py
measures N = 1 ... 64; off on CPUs, where the stacked generic path is slower than the CPU path."""


@dataclass(frozen=True)
class StudySettings:
    """What to compare, with what budget, where."""

    data: str
    """Generic data file (.h5/.npz), absolute path."""
    name: str = "study"
    """Study name: the directory under ``storage`` and the MLflow experiment name."""
    methods: tuple[str, ...] = METHODS
    """Methods to compare (cells are methods x proportions)."""
    missing: tuple[float, ...] = DEFAULT_MISSING
    """Proportions of observed training labels removed (the paper's Fig. 5)."""
    trials: int = 20
    """Optuna trials per cell: the same budget for every cell."""
    replicates: int = 5
    """Seeds each cell's best config is retrained with and tested (the paper: 5)."""
    epochs: int = 100
    """Epochs per trial (per LE stage); the scheduler's max_t."""
    objective: str = objectives.DEFAULT
    """What the search (per trial) and model selection (per epoch) optimise: val/loss,
    val/auprc_macro or val/f1_macro_tuned (tagtune.study.objective; why the default: docs/study.md).
    A study.yaml written before the setting reads as val/loss, what it ran with."""
    grace_period: int | None = None
    """ASHA: epochs every trial gets before it can be stopped (None: 5, or epochs if fewer)."""
    reduction_factor: float = 3.0
    """ASHA: keep the best 1/reduction_factor at each rung."""
    cpus_per_trial: int = 1
    """CPUs (and torch threads) per trial."""
    gpus_per_trial: float = 0.0
    """GPUs per trial, a fraction to share one (0.25: four trials a card); 0 = trials train on
    their CPUs. A trial trains on the GPU Ray assigns it (device cuda)."""
    fuse: int | str = 1
    """Fused trials: up to this many trials of a cell train as one stacked network in one process
    holding the trial's resources (tagtune.launch.fusion; each still its own Tune trial, Optuna trial
    and MLflow run); 1 = off; ``auto``: FUSE_ON_GPU where trials have a GPU, off on CPUs."""
    checkpoint_every: int = 5
    """Checkpoint a trial every this many epochs (and at its end), at most every ``checkpoint_s``."""
    checkpoint_s: float = 10.0
    """Seconds of a trial between two of its checkpoints, at least: of the epochs ``checkpoint_every``
    makes due, only one this long after the trial's last checkpoint (or its start) is one. A
    checkpoint is a report the trial waits on and a state written; with epochs of milliseconds
    (a GPU, a small network) checkpoints every few epochs were most of a trial's cost, and a
    kill loses at most this long (plus ``checkpoint_every`` epochs) of a trial's training. 0: every
    ``checkpoint_every`` epochs, whatever they take."""
    max_failures: int = 3
    """Retries of a trial whose worker died, each from its last checkpoint."""
    seed: int = 0
    """Seeds the searchers; replicate r uses seed + r."""
    preset: str = "openmic"
    """Paper settings to start from, one of PRESETS: openmic or sonyc (the paper's model size,
    gamma, alpha, beta on tagtune's network), openmic-paper or sonyc-paper (its exact setup)."""
    storage: str = "studies"
    """Directory holding the study (shared storage on a multi-node cluster)."""
    address: str | None = None
    """Ray cluster: host:port, ray://host:port, or auto (the one `ray start` runs on this
    machine); None = a fresh local Ray of this study's own, whatever else runs here."""
    num_cpus: int | None = None
    """CPUs of the local Ray (None = all of this machine's)."""
    mlflow_uri: str | None = None
    """Tracking URI; None = sqlite file inside the study directory."""
    search_space: str | None = None
    """YAML file overriding search ranges (its ``search:`` mapping)."""
    share_le_teacher: bool = True
    """LE: train stage 1 once per (data, proportion, seed) with the paper's lr and share it
    among trials (tagtune.study.fit.teachers); False = every LE trial trains its own, with its lr."""
    reuse_best_replicate: bool = True
    """Replicates: where the search's best trial ran with a replicate's seed (the search's trials
    run with the train seed, replicate r with seed + r), that trial's final state stands in for
    the replicate -- the same config and seed, so the same run (tested bitwise) -- instead of
    training it again (one replicate fewer per cell). Its MLflow run carries the final metrics;
    the epochs' curve is on the search trial's run. False: every replicate trains."""
    paper_point: bool = True
    """Replicate each cell's paper point (its first trial) on the best config's seeds, so that the
    summary and the report state the search's gain over it (tagtune.analysis.gain); False: only
    the best configs' replicates (as before the setting)."""
    rerank: int = 0
    """After the search, retrain each cell's top ``rerank`` complete trials on ``rerank_seeds``
    extra seeds (seed + 1000 + j: never a replicate's) and choose the config with the best MEAN
    validation score of the objective over its search run and those seeds (tagtune.launch.rerank):
    the single best run is partly the luckiest. 0 or 1: the single best run (why the default:
    docs/study.md)."""
    rerank_seeds: int = 2
    """Extra seeds of each re-ranked trial (only with rerank >= 2)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig overrides for every trial (batch_size, model, lr_decay_epochs ...)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _typed(f.name, str(f.type), getattr(self, f.name)))
        if self.grace_period is None:  # not set by the user: `--epochs 2` alone must work
            object.__setattr__(self, "grace_period", min(DEFAULT_GRACE_PERIOD, self.epochs))
        object.__setattr__(self, "methods", tuple(m.lower() for m in self.methods))
        bad = [m for m in self.methods if m not in METHODS]
        _check(not bad, "methods", f"unknown method {bad[0] if bad else ''!r}; use {', '.join(METHODS)}")
        _check(len(self.methods) > 0, "methods", "at least one method")
        _check(len(set(self.methods)) == len(self.methods), "methods", "listed twice")
        for p in self.missing:
            check_proportion(p, where="study")
        _check(len(self.missing) > 0, "missing", "at least one proportion")
        for name in ("trials", "replicates", "epochs", "grace_period", "cpus_per_trial",
                     "checkpoint_every"):
            _check(getattr(self, name) >= 1 or (name == "replicates" and self.replicates == 0),
                   name, f"must be >= 1, got {getattr(self, name)}")
        _check(self.checkpoint_s >= 0, "checkpoint_s", f"must be >= 0, got {self.checkpoint_s:g}")
        _check(self.rerank >= 0, "rerank", f"must be >= 0, got {self.rerank}")
        _check(self.rerank_seeds >= 1, "rerank_seeds", f"must be >= 1, got {self.rerank_seeds}")
        _check(self.rerank < 2 or self.replicates <= RERANK_SEED, "replicates",
               f"at most {RERANK_SEED} with rerank (the re-rank's seeds start at seed + {RERANK_SEED})")
        _check(self.grace_period <= self.epochs, "grace_period", "must be <= epochs")
        # Ray's rule: a share of one GPU below 1, whole GPUs above.
        gpus = self.gpus_per_trial
        _check(gpus >= 0 and (gpus <= 1 or gpus.is_integer()), "gpus_per_trial",
               f"must be a fraction in [0, 1] or a whole number, got {gpus:g}")
        _check(self.reduction_factor > 1, "reduction_factor", "must be > 1")
        _check(self.objective in objectives.OBJECTIVES, "objective",
               f"unknown objective {self.objective!r}; use one of {', '.join(objectives.OBJECTIVES)}")
        _check(self.preset in PRESETS, "preset", f"use one of {', '.join(PRESETS)}")
        _check(self.name and "/" not in self.name, "name", "must be a non-empty name without '/'")
        # Path("s3://b/x") is the relative directory "s3:/b/x": refuse it rather than write there.
        # The study directory needs a filesystem (journal appends, SQLite, the teachers' lock file).
        _check("://" not in str(self.storage), "storage",
               f"{self.storage!r} is a URI; give a filesystem path every node sees "
               "(for a bucket: mount it, e.g. through FUSE)")
        # Absolute from here on, in study.yaml too: `study resume` and `mlflow sync` may run from
        # another directory and must find the same study, data, ranges and MLflow store.
        for name in _PATHS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(Path(getattr(self, name)).expanduser().absolute()))
        if self.mlflow_uri is not None:
            object.__setattr__(self, "mlflow_uri", _tracking_uri(str(self.mlflow_uri)))
        train_config(self.base_config(method="b1", missing=0.0))  # overrides must be valid

    @property
    def fuse_size(self) -> int:
        """How many trials train as one stack (``fuse`` with ``auto`` resolved); 1: unfused."""
        if self.fuse == "auto":
            return FUSE_ON_GPU if self.gpus_per_trial > 0 else 1
        return int(self.fuse)

    @property
    def study_dir(self) -> Path:
        return Path(self.storage) / self.name

    @property
    def cells(self) -> list[str]:
        """Every cell's id, methods first, in the order the settings list them."""
        return [cell_id(m, p) for m in self.methods for p in self.missing]

    @property
    def teacher_cache(self) -> Path | None:
        """Where LE's shared teachers live (None: not shared)."""
        return self.study_dir / TEACHERS if self.share_le_teacher else None

    @property
    def tracking_uri(self) -> str:
        return tracking_uri(self.study_dir, self.mlflow_uri)

    def base_config(self, **extra: Any) -> dict[str, Any]:
        """Trial config shared by every trial: paper preset, then user overrides."""
        from tagtune.study.methods.le import TEACHER_LR  # torch-free: its declarations

        preset = PRESETS[self.preset]
        model = {**preset["model"], **self.train.get("model", {})}
        # A shared LE teacher needs one lr for every trial of a cell: in the config itself, so
        # that an exported best config retrains the very same teacher.
        teacher = {"le_teacher_lr": TEACHER_LR} if self.share_le_teacher else {}
        return {**{k: v for k, v in preset.items() if k != "model"}, **teacher, **self.train,
                "model": model, "epochs": self.epochs, "threads": self.cpus_per_trial,
                # explicit: with auto, a trial Ray gave no GPU could take a visible one anyway
                "device": "cuda" if self.gpus_per_trial > 0 else "cpu",
                "checkpoint_every": self.checkpoint_every, "checkpoint_s": self.checkpoint_s,
                "objective": self.objective, **extra}

    def as_dict(self) -> dict[str, Any]:
        """The fields as study.yaml holds them (lists, not tuples)."""
        d = asdict(self)
        d["methods"], d["missing"] = list(self.methods), list(self.missing)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


_PATHS = ("data", "storage", "search_space")


def _typed(name: str, annotation: str, v: Any) -> Any:
    """``v`` as the field's annotated type (a YAML int for a float, one item for a list), or
    a ConfigError naming the field: a wrong type must not travel into a running study."""
    if v is None and annotation.endswith("| None"):
        return None
    kind = annotation.split(" |")[0].split("[")[0]
    if kind == "tuple":  # methods: str items, missing: float items
        items = v if isinstance(v, list | tuple) else [v]
        item = "str" if "str" in annotation else "float"
        return tuple(_typed(name, item, x) for x in items)
    if name == "fuse":  # a number of trials, or auto
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        n = typed(name, "int", int(v) if isinstance(v, str) and v.strip().isdigit() else v, where="study")
        _check(n >= 1, name, f"must be >= 1 (1: off) or auto, got {n}")
        return n
    if name in _PATHS and isinstance(v, os.PathLike):
        v = os.fspath(v)
    return typed(name, kind, v, where="study")


def _tracking_uri(uri: str) -> str:
    """An MLflow tracking URI a study can use; a relative SQLite path made absolute."""
    scheme = urlparse(uri).scheme
    _check(scheme not in ("", "file"), "mlflow_uri",
           f"{uri!r} is MLflow's file store, which MLflow 3 refuses; use "
           "sqlite:////absolute/path/mlflow.db or http(s)://tracking-server")
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        _check(uri.startswith("sqlite:///") and path not in ("", ":memory:"), "mlflow_uri",
               f"{uri!r}: give a database file, sqlite:////absolute/path/mlflow.db")
        return f"sqlite:///{Path(path).expanduser().absolute()}"
    return uri


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(name, problem, where="study")


def read_fields(path: str | Path) -> dict[str, Any]:
    """A study YAML's top-level fields as given. Its ``search:`` mapping is the search space, read
    by tagtune.search_spaces from the file itself: ``search_space`` names the file where it is."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("file", f"cannot read YAML ({first_line(e, None)})", where=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError("file", "expected a mapping", where=str(path))
    if raw.pop("search", None) is not None and "search_space" not in raw:
        raw["search_space"] = str(path)
    return raw


def load_settings(path: str | Path, *, known_only: bool = False, absent: dict[str, Any] | None = None,
                  **overrides: Any) -> StudySettings:
    """Settings from a YAML file (its top-level keys are the fields), then ``overrides``;
    ``known_only``: keys that are no field are left out rather than refused; ``absent``: values of
    fields the file does not name (an existing study's: what it ran with before the field existed)."""
    path = Path(path)
    raw = {**(absent or {}), **read_fields(path)}
    known = {f.name for f in fields(StudySettings)}
    unknown = sorted(set(raw) - known)
    if unknown and not known_only:
        raise ConfigError(unknown[0], "unknown key", where=str(path))
    merged = {**{k: v for k, v in raw.items() if k in known},
              **{k: v for k, v in overrides.items() if v is not None}}
    if "data" not in merged:  # a mapping without it (an empty file too): StudySettings needs it
        raise ConfigError("data", "not given: the data file to study (a data: key, or --data)",
                          where=str(path))
    try:
        return StudySettings(**merged)
    except TypeError as e:
        raise ConfigError("file", str(e), where=str(path)) from None
    except ConfigError as e:  # a value of the file's (not an override's): name the file
        if e.field not in raw or overrides.get(e.field) is not None:
            raise
        raise ConfigError(e.field, str(e).split(f": {e.field}: ", 1)[-1], where=str(path)) from None


def load_study(study_dir: str | Path, **overrides: Any) -> StudySettings:
    """The settings of an existing study, which lives where it is found: ``study_dir``.

    (A study directory copied or mounted elsewhere -- a laptop reading the cluster's share --
    is still one study: its storage is taken from where it is, its name from study.yaml.)
    """
    study_dir = Path(study_dir).expanduser().absolute()
    path = _settings_file(study_dir)
    settings = load_settings(path, **overrides, absent=BEFORE_FIELDS, storage=str(study_dir.parent))
    if settings.name != study_dir.name:
        raise ConfigError("name", f"study.yaml names the study {settings.name!r}, its directory is "
                          f"{study_dir.name!r}; rename the directory back", where=str(path))
    return settings


def read_study(study_dir: str | Path) -> StudySettings:
    """The settings of a study as the analysis reads them: like :func:`load_study`, but keys
    this version does not know are left out (a newer launch may add some) and a renamed
    directory is read too (its study.yaml still names the MLflow experiment)."""
    study_dir = Path(study_dir).expanduser().absolute()
    return load_settings(_settings_file(study_dir), known_only=True, absent=BEFORE_FIELDS,
                         storage=str(study_dir.parent))


BEFORE_FIELDS = {"objective": objectives.LEGACY}
"""What an existing study.yaml that lacks a field ran with: a study from before ``objective``
selected by the validation loss, whatever a new study's default is now."""


def _settings_file(study_dir: Path) -> Path:
    if not (study_dir / SETTINGS).is_file():
        raise ConfigError(SETTINGS, "not a study directory (no study.yaml)", where=str(study_dir))
    return study_dir / SETTINGS
