"""What a study wrote, as one tidy table: one row per search trial and per replicate.

Read from files only (no Ray started, nothing of ``launch`` imported; the folder's layout is
:mod:`tagtune.study.folder`'s): ``study.yaml``, each trial's ``params.json`` and ``result.json`` (one
JSON line per report) under ``search/`` and ``replicate/``, the trials each phase's Tune snapshot
(``experiment_state-*.json``) recorded, and the tracking journal's ``end`` events, which say
which trials ended (with neither an end event nor a final status in Tune's snapshot, a trial
was still running when the study stopped).

``phase`` is search, replicate (the best configs' replicates) or paper (the paper point's
replicates on the same seeds, tagtune.analysis.gain).
Columns: study, phase, cell, method, proportion, seed, replicate, trial_id, status,
stopped_early, epochs_run, budget, time_s, every hyperparameter of the resolved TrainConfig
(model ones as ``model.hidden`` ...; a method's irrelevant ones, e.g. gamma for B1, are NaN),
then every metric of the trial's last report (``val/...``, ``test/...``, ``test_full/...``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tagtune.analysis.gain import PAPER
from tagtune.study.config import ConfigError, applies, to_dict
from tagtune.study.folder import (
    BEST,
    JOURNAL,
    OPTUNA_JOURNAL,
    PHASES,
    SEARCH,
    SUMMARY,
    StudySettings,
    optuna_store,
    phase_dirs,
    read_study,
    superseded,
    train_config,
    trial_id_of,
    tunestate,
)
from tagtune.study.objective import mode, score_key

SELECTION = "val/best_loss"  # what a study with objective val/loss selected by (score_key: any)

METRIC_PREFIXES = ("train/", "val/", "val_full/", "test/", "test_full/")
ID_COLUMNS = ["study", "phase", "cell", "method", "proportion", "seed", "replicate", "trial_id",
              "status", "stopped_early", "epochs_run", "budget", "time_s"]


@dataclass
class StudyFiles:
    """A study directory as found on disk; ``settings`` is its study.yaml."""

    dir: Path
    settings: StudySettings
    best: dict[str, dict[str, Any]] | None
    summary: dict[str, Any] | None
    missing_files: list[str] = field(default_factory=list)

    @property
    def cells(self) -> list[str]:
        """Every cell the study meant to run, in the study's order."""
        return self.settings.cells


def open_study(study_dir: str | Path) -> StudyFiles:
    """Read a study directory's settings and summaries; a ConfigError if it is not one."""

    d = Path(study_dir).absolute()
    settings = read_study(d)
    found = {name: _read_json(d / name) for name in (BEST, SUMMARY)}
    missing = [name for name in (BEST, SUMMARY, *PHASES) if not (d / name).exists()]
    missing += [] if optuna_store(d) else [OPTUNA_JOURNAL]
    return StudyFiles(d, settings, found[BEST], found[SUMMARY], missing)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(path.name, f"unreadable ({e})", where=str(path.parent)) from None


def ended_trials(study_dir: Path) -> dict[str, str] | None:
    """trial_id -> FINISHED/FAILED from the journal's end events; None without a journal."""
    path = study_dir / JOURNAL
    if not path.is_file():
        return None
    out: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            if '"end"' not in line:  # most lines are per-epoch results: skip the JSON parse
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write
                continue
            if event.get("op") == "end":
                out[event["trial_id"]] = event["status"]
    return out


def recorded_trials(phase_dir: Path) -> dict[str, str] | None:
    """trial_id -> Tune status (TERMINATED, ERROR, RUNNING, ...) from the phase's newest whole
    experiment snapshot (a kept generation where the newest was torn by a kill); None without
    a readable one.

    Only these trials belong to the study: a driver killed between two snapshots can leave
    directories of trials that Tune never recorded, whose budget a resumed study hands out
    again under new ids; counting them would count those trials twice.
    """
    return tunestate.recorded_trials(phase_dir)


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a trial killed mid-write
            continue
    return rows


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    resolved = to_dict(train_config(config))
    out: dict[str, Any] = {}
    for k, v in resolved.items():
        if k == "model":
            out |= {f"model.{mk}": mv for mk, mv in v.items()}
        elif k in ("method", "missing", "seed"):
            continue  # identity columns
        elif isinstance(v, list):
            out[k] = json.dumps(v)  # one cell per value: CSV- and Parquet-friendly
        elif not applies(resolved["method"], k):  # e.g. gamma for B1: NaN, not the preset's
            out[k] = math.nan
        else:
            out[k] = v
    return out


def _status(results: list[dict], end: str | None, tune_status: str | None) -> str:
    """complete / stopped_early / failed / unfinished / unknown, from the trial's last
    report, its end event in the journal (FINISHED/FAILED) and else Tune's snapshot."""
    if end is None:  # no end event (yet): Tune's own record, possibly older, decides
        end = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(tune_status or "", tune_status)
    if end == "FAILED":
        return "failed"
    if (results[-1] if results else {}).get("complete"):
        return "complete"
    if end == "FINISHED":
        return "stopped_early"  # ended without completing: the scheduler cut it short
    return "unknown" if end is None else "unfinished"  # RUNNING, PENDING, PAUSED


def trial_rows(study: StudyFiles) -> list[dict[str, Any]]:
    ended = ended_trials(study.dir)
    # Replicates a later round re-ran for a new best config (an extended study) do not count.
    gone = superseded(study.dir)
    rows = []
    for phase, root in phase_dirs(study.dir):  # every round's experiments (search.2, ...)
        if not root.is_dir():
            continue
        recorded = recorded_trials(root)
        for trial_dir in sorted(p for p in root.iterdir() if (p / "params.json").is_file()):
            trial_id = trial_id_of(trial_dir.name)
            if (recorded is not None and trial_id not in recorded) or trial_id in gone:
                continue
            try:
                config = json.loads((trial_dir / "params.json").read_text())
            except json.JSONDecodeError:  # being written by a study that is running now
                continue
            results = _results(trial_dir)
            last = results[-1] if results else {}
            status = _status(results, (ended or {}).get(trial_id),
                             (recorded or {}).get(trial_id))
            cfg = train_config(config)
            rows.append({
                # Issue 33: the paper point's replicates (tagtune.analysis.gain) are a phase of their
                # own here, so nothing that reads the best configs' replicates counts them.
                "study": study.settings.name, "phase": PAPER if config.get("point") == PAPER else phase,
                "cell": config["cell"],
                "method": cfg.method, "proportion": cfg.missing, "seed": cfg.seed,
                "replicate": config.get("replicate"), "trial_id": trial_id, "status": status,
                "stopped_early": status == "stopped_early",
                "epochs_run": max((int(r.get("epoch", 0)) for r in results), default=0),
                "budget": last.get("budget"), "time_s": last.get("time_total_s"),
                "start": (last["timestamp"] - last["time_total_s"]) if results else math.nan,
                **_hyperparameters(config),
                **{k: v for k, v in last.items() if k.startswith(METRIC_PREFIXES)
                   and isinstance(v, int | float) and not isinstance(v, bool)},
            })
    return rows


def trials_table(study: StudyFiles) -> pd.DataFrame:
    """The tidy table of the study (see the module docstring): search trials by cell in the
    order they started, then replicates by cell and seed."""
    rows = trial_rows(study)
    if not rows:
        raise ConfigError("search", "no trial has reported yet: nothing to analyse",
                          where=str(study.dir))
    df = pd.DataFrame(rows)
    df["phase"] = pd.Categorical(df["phase"], (*PHASES, PAPER), ordered=True)
    df = df.sort_values(["phase", "cell", "replicate", "start"], kind="stable").reset_index(drop=True)
    df["phase"] = df["phase"].astype(str)
    # Within a cell, the order its search trials started in (1, 2, ...): the history's x axis.
    search = df["phase"] == "search"
    df.loc[search, "trial_number"] = df[search].groupby("cell").cumcount() + 1
    metrics = sorted(c for c in df.columns if c.startswith(METRIC_PREFIXES))
    rest = [c for c in df.columns if c not in ID_COLUMNS and c not in metrics]
    return df[ID_COLUMNS + rest + metrics]


# SONYC-UST (real or sonyc-like): the DCASE challenge's macro AUPRC, the figure its papers
# report; fine level where the classes are the fine tags, else coarse. Full truth first.
DCASE_HEADLINES = ("test_full/dcase_fine_macro_auprc", "test/dcase_fine_macro_auprc",
                   "test_full/dcase_coarse_macro_auprc", "test/dcase_coarse_macro_auprc")


def headline_metric(df: pd.DataFrame, metric: str | None = None) -> str:
    """The test metric the tables and figures show: ``metric`` if given; on SONYC-UST's
    classes the official DCASE macro AUPRC; else F1 macro over the full truth where the data
    has it (synthetic), else over the observed test labels."""
    reps = df[df["phase"] == "replicate"]
    if metric is not None:
        if metric not in df.columns:
            known = ", ".join(c for c in df.columns if c.startswith(("test/", "test_full/")))
            raise ConfigError("metric", f"{metric!r} not in the results; use one of: "
                              f"{known or 'none (no replicate finished)'}", where="analyze")
        return metric
    for name in (*DCASE_HEADLINES, "test_full/f1_macro"):
        if name in reps and reps[name].notna().any():
            return name
    return "test/f1_macro"


def best_configs(study: StudyFiles, df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per cell, the search trial its replicates retrained: best.json where the study wrote
    it, else the same rule on the table (the best score of the study's objective -- lowest
    val/best_loss for val/loss -- among trials that completed)."""
    if study.best is not None:
        return dict(study.best)
    selection = score_key(study.settings.objective)
    lowest = mode(study.settings.objective) == "min"
    done = df[(df["phase"] == "search") & (df["status"] == "complete")]
    done = done[done[selection].notna()] if selection in done else done.iloc[0:0]
    out = {}
    for cell, group in done.groupby("cell"):
        top = group[group[selection] == (group[selection].min() if lowest else group[selection].max())]
        # A tie (a ranking metric on a few observed labels ties often) goes to the earliest Optuna
        # trial, the paper's point first: the rule of tagtune.launch.counts.best_per_cell.
        configs = {}
        for tid in top["trial_id"]:
            trial_dir = next(p for _, d in phase_dirs(study.dir, SEARCH) for p in d.glob(f"*_{tid}"))
            configs[tid] = json.loads((trial_dir / "params.json").read_text())
        tid = min(configs, key=lambda t: (configs[t].get("optuna_trial", math.inf), t))
        out[str(cell)] = {"value": float(top.loc[top["trial_id"] == tid, selection].iloc[0]),
                          "metric": selection, "trial_id": tid, "config": configs[tid]}
    return out


def completeness(study: StudyFiles, df: pd.DataFrame, best: dict[str, Any]) -> pd.DataFrame:
    """Per cell: search trials by status against the budget, replicates found against those
    expected; ``missing`` says in words what is not there."""
    s = study.settings
    rows = []
    for cell in study.cells:
        search = df[(df["phase"] == "search") & (df["cell"] == cell)]
        reps = df[(df["phase"] == "replicate") & (df["cell"] == cell) & (df["status"] == "complete")]
        counts = search["status"].value_counts()
        n = {k: int(counts.get(k, 0)) for k in
             ("complete", "stopped_early", "failed", "unfinished", "unknown")}
        notes = []
        not_started = s.trials - len(search)
        if not_started > 0:
            notes.append(f"{not_started} of {s.trials} trials never started")
        if n["unfinished"] or n["unknown"]:
            k = n["unfinished"] + n["unknown"]
            notes.append(f"{k} trial{'s' if k != 1 else ''} not finished")
        if cell not in best:
            notes.append("no trial ran to the end: no best config")
        if len(reps) < s.replicates:
            notes.append(f"{len(reps)} of {s.replicates} replicates finished")
        rows.append({"cell": cell, "trials": len(search), **n, "budget": s.trials,
                     "replicates": len(reps), "replicates_expected": s.replicates,
                     "missing": "; ".join(notes)})
    return pd.DataFrame(rows)


__all__ = ["PHASES", "SELECTION", "StudyFiles", "best_configs", "completeness", "ended_trials",
           "headline_metric", "open_study", "trials_table"]
