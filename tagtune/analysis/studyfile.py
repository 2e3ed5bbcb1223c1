"""A study's ``study.yaml`` as the analysis reads it, without importing ``tagtune.launch``.

``launch`` writes the file (every field of its StudySettings, paths absolute); the analysis
only reads it, and only the fields it uses. Fields it does not know are kept in ``raw`` (the
report lists them) rather than refused: a newer launch may add some.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tagtune.study.config import ConfigError, typed


@dataclass(frozen=True)
class StudyRecord:
    """What the analysis needs of a study's settings."""

    name: str
    """The study's name: its directory and MLflow experiment."""
    data: str
    """The data file the study ran on."""
    methods: tuple[str, ...]
    """Methods compared."""
    missing: tuple[float, ...]
    """Proportions of training labels removed."""
    trials: int
    """Search trials per cell."""
    replicates: int
    """Seeds each cell's best config was retrained with."""
    seed: int
    """Replicate r used seed + r."""
    mlflow_uri: str | None = None
    """Tracking URI given at launch (None: the study's own mlflow.db)."""
    raw: dict[str, Any] = field(default_factory=dict)
    """Every setting in the file, for the report."""


def read_study_yaml(path: str | Path) -> StudyRecord:
    """The record of ``path`` (a study.yaml); a ConfigError naming the file and field."""
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError("file", f"cannot read YAML ({problem})", where=where) from None
    if not isinstance(raw, dict):
        raise ConfigError("file", "expected a mapping", where=where)

    def get(name: str, kind: str) -> Any:
        if name not in raw:
            raise ConfigError(name, "missing", where=where)
        return typed(name, kind, raw[name], where=where)

    def items(name: str, kind: str) -> tuple:
        value = raw.get(name)
        value = value if isinstance(value, list | tuple) else [value]
        return tuple(typed(name, kind, v, where=where) for v in value)

    uri = raw.get("mlflow_uri")
    return StudyRecord(
        name=get("name", "str"), data=get("data", "str"), methods=items("methods", "str"),
        missing=items("missing", "float"), trials=get("trials", "int"),
        replicates=get("replicates", "int"), seed=get("seed", "int"),
        mlflow_uri=None if uri is None else typed("mlflow_uri", "str", uri, where=where),
        raw={k: v for k, v in raw.items() if k != "search"})


__all__ = ["StudyRecord", "read_study_yaml"]
