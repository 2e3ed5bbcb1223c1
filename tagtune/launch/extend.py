"""Growing a finished study: ``tagtune study extend``.

An extension adds methods, proportions, trials per cell or replicates to a finished study, and
the result is what one study with the union of the settings would have produced. It runs as a
new *round*: the two phases in new Tune experiments (``search.2/``, ``replicate.2/``; Tune's
``Tuner.restore`` continues an interrupted experiment, never a finished one), recorded in
``rounds.json`` (when, what was added or grown). The round's searcher carries every earlier
Optuna study on (tagtune.launch.searcher.CellSearcher.continue_from), its ASHA is seeded with the
earlier trials' rungs, and only the replicates a cell lacks are run (all of them where its best
trial changed; the earlier ones are then superseded). An interrupted extension is an
interrupted round: ``tagtune study resume`` continues it.

Refused, in one line and before anything is written: an unfinished study, a different data file
(by content), a change of what makes trials comparable (epochs, model, preset, search ranges,
...), fewer trials or replicates than the study has, an invalid method or proportion.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from tagtune.launch.study import StudyResult, now, run_study
from tagtune.search_spaces import Ranges, load_ranges
from tagtune.study import atomic
from tagtune.study.config import ConfigError
from tagtune.study.data import load
from tagtune.study.folder import (
    BEST,
    ROUNDS,
    SETTINGS,
    SUMMARY,
    StudySettings,
    load_study,
    optuna_store,
    proportion_text,
    read_fields,
    read_rounds,
)
from tagtune.study.methods import check_supported

GROWN = ("methods", "missing", "trials", "replicates")
"""What an extension may add to: the union of old and new is the study's."""
RUNTIME = ("address", "num_cpus", "cpus_per_trial", "gpus_per_trial", "max_failures", "fuse")
"""Where and how fast it runs, not what: may differ from the first round's."""
NOT_COMPARED = ("name", "storage", "data", "search_space")
"""The study is the directory given; the data is compared by content, the ranges by value."""


def extend_study(study_dir: str | Path, *, config: str | Path | None = None, verbose: int = 1,
                 **given: Any) -> StudyResult:
    """Extend the finished study in ``study_dir`` by ``given`` (and the fields of the YAML file
    ``config``; a flag wins); see the module docstring. Returns the whole study's result."""
    study_dir = Path(study_dir).expanduser().absolute()
    old = load_study(study_dir)
    _check_finished(study_dir)
    asked = read_fields(Path(config).absolute()) if config is not None else {}
    asked |= {k: v for k, v in given.items() if v is not None}
    new = _union(old, asked)
    _check_ranges(old, new)
    ds = load(new.data)
    fingerprint = json.loads((study_dir / SUMMARY).read_text()).get("fingerprint")
    if fingerprint and ds.fingerprint != fingerprint:
        raise ConfigError("data", f"a different data file (content fingerprint {ds.fingerprint[:12]}, "
                          f"the study's {fingerprint[:12]}); extend with the study's data",
                          where=new.data)
    check_supported(new.methods, ds.observation)
    added = [c for c in new.cells if c not in old.cells]
    grown = {c: new.trials - old.trials for c in old.cells if new.trials > old.trials}
    if not added and not grown and new.replicates == old.replicates:
        raise ConfigError("extend", "nothing to add: give methods, proportions, trials or "
                          "replicates beyond the study's", where=str(study_dir))
    best = json.loads((study_dir / BEST).read_text()) if (study_dir / BEST).is_file() else {}
    rounds = read_rounds(study_dir) or [{
        "round": 1, "started": _first_start(study_dir), "ended": _mtime(study_dir / SUMMARY),
        "added_cells": old.cells,
        "grown_cells": {}, "trials": old.trials, "replicates": old.replicates}]
    rounds.append({
        "round": len(rounds) + 1, "started": now(), "ended": None, "added_cells": added,
        "grown_cells": grown, "trials": new.trials, "replicates": new.replicates,
        "previous_replicates": old.replicates,
        "previous_best": {c: b["trial_id"] for c, b in best.items()}, "superseded": [],
        # The round's settings, written again by a resume if a kill cut in before study.yaml.
        "study_yaml": new.to_yaml()})
    # The round first: from here on the study has an unfinished round, which resume continues.
    atomic.write_json(study_dir / ROUNDS, rounds, indent=2)
    atomic.write_text(study_dir / SETTINGS, new.to_yaml())
    return run_study(new, verbose=verbose)


def _first_start(study_dir: Path) -> str | None:
    """When the study's first round began: its earliest Optuna study's start (the export holds one
    study per cell, each with its first trial's start); None where that is not known."""
    import datetime as dt

    import optuna

    from tagtune.analysis.importance import optuna_storage

    store = optuna_store(study_dir)
    if store is None:
        return None
    try:
        starts = [s.datetime_start for s in optuna.get_all_study_summaries(optuna_storage(store))
                  if s.datetime_start is not None]
    except Exception:  # noqa: BLE001 -- an unreadable export only loses the date
        return None
    if not starts:
        return None
    first = min(starts).astimezone(dt.UTC)  # Optuna's datetimes are naive local time
    return first.strftime("%Y-%m-%dT%H:%M:%SZ")


def _mtime(path: Path) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_finished(study_dir: Path) -> None:
    rounds = read_rounds(study_dir)
    if not (study_dir / SUMMARY).is_file() or (rounds and rounds[-1].get("ended") is None):
        raise ConfigError("study", f"unfinished: resume it first (tagtune study resume {study_dir})",
                          where=str(study_dir))


def _union(old: StudySettings, asked: dict[str, Any]) -> StudySettings:
    """The settings of the study grown by ``asked``; a ConfigError naming the first field that
    would make old and new trials incomparable (or is no field)."""
    known = {f.name for f in fields(StudySettings)}
    unknown = sorted(set(asked) - known)
    if unknown:
        raise ConfigError(unknown[0], "unknown key", where="extend")
    merged = old.as_dict()
    methods = tuple(str(m).lower() for m in _items(asked.get("methods", ())))
    merged["methods"] = [*old.methods, *(m for m in methods if m not in old.methods)]
    have = {proportion_text(p) for p in old.missing}
    merged["missing"] = [*old.missing, *(p for p in _items(asked.get("missing", ()))
                                         if not _is_number(p) or proportion_text(p) not in have)]
    for name in ("trials", "replicates"):
        if asked.get(name) is not None:
            merged[name] = asked[name]
    for name in (*RUNTIME, "data", "search_space"):
        if name in asked:
            merged[name] = asked[name]
    compared = [n for n in known if n not in (*GROWN, *RUNTIME, *NOT_COMPARED)]
    for name in compared:
        if name in asked:
            merged[name] = asked[name]
    new = StudySettings(**merged)  # the usual checks: an unknown method, a proportion >= 1 ...
    for name in ("trials", "replicates"):
        if getattr(new, name) < getattr(old, name):
            raise ConfigError(name, f"{getattr(new, name)} is fewer than the study's "
                              f"{getattr(old, name)}; an extension only adds", where="extend")
    for name in compared:
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            field = name
            if isinstance(a, dict) and isinstance(b, dict):  # train: name the key (train.model)
                field += "." + next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise ConfigError(field, f"{b!r} differs from the study's {a!r}: old and new trials "
                              "would not be comparable; run a new study", where="extend")
    return new


def _items(v: Any) -> list:
    return list(v) if isinstance(v, list | tuple) else [v]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_ranges(old: StudySettings, new: StudySettings) -> None:
    """The search ranges are the existing cells' search space: an extension keeps them."""
    a = load_ranges(old.search_space) if old.search_space else Ranges()
    b = load_ranges(new.search_space) if new.search_space else Ranges()
    for f in fields(Ranges):
        if getattr(a, f.name) != getattr(b, f.name):
            raise ConfigError(f"search.{f.name}", f"{getattr(b, f.name)} differs from the study's "
                              f"{getattr(a, f.name)}: the existing cells' search space must stay",
                              where="extend")


__all__ = ["extend_study"]
