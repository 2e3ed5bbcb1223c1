"""``analyze(study_dir)``: from a study directory to a table, figures, statistics, exported
best configs and a report, all under one output folder (default ``STUDY_DIR/analysis``)::

    trials.csv (+ trials.parquet if pyarrow is there)   the tidy table
    metrics.csv                                          F1 at 0.5, F1 tuned, mAP per method x proportion
    figures/*.png                                        the figures
    best/*.yaml                                          runnable best configs
    report.html                                          everything above on one page

Reads files only and starts no Ray; logs figures, table and report to the study's MLflow
experiment in one run named ``analysis`` (see :mod:`tagtune.analysis.tracking`).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tagtune.analysis import figures as fig
from tagtune.analysis import gain, report, stats
from tagtune.analysis.export import write_best
from tagtune.analysis.importance import param_importances
from tagtune.analysis.table import (
    StudyFiles,
    best_configs,
    completeness,
    headline_metric,
    open_study,
    trials_table,
)
from tagtune.analysis.tracking import log_analysis, tracking_uri
from tagtune.study import atomic
from tagtune.study.atomic import atomic_path
from tagtune.study.config import METHOD_PARAMS, applies, output_dir
from tagtune.study.folder import (
    ANALYSIS,
    BEST,
    OPTUNA_JOURNAL,
    REPLICATE,
    SUMMARY,
    optuna_store,
    train_config,
)


@dataclass
class AnalysisResult:
    """What :func:`analyze` wrote and found."""

    study_dir: Path
    out_dir: Path
    report: Path
    metric: str
    """The headline test metric, e.g. ``test_full/f1_macro``."""
    table: pd.DataFrame
    """One row per search trial and per replicate (see :mod:`tagtune.analysis.table`)."""
    table_files: list[Path]
    completeness: pd.DataFrame
    summary: pd.DataFrame
    """Per (method, proportion): n, mean, sd of the metric over replicates."""
    summary_wide: pd.DataFrame
    comparisons: pd.DataFrame
    """Paired comparisons with B1 and B0 (see :func:`tagtune.analysis.stats.paired_comparisons`)."""
    conclusions: list[str]
    missing: list[str]
    """What the study has not (yet) produced, in words; empty for a finished study."""
    figures: dict[str, Path] = field(default_factory=dict)
    skipped_figures: dict[str, str] = field(default_factory=dict)
    best_dir: Path | None = None
    exported: list[Path] = field(default_factory=list)
    """The best-config YAML files written into ``best_dir``: one per cell, then the combined one."""
    mlflow_run_id: str | None = None
    mlflow_note: str = ""
    answer: pd.DataFrame = field(default_factory=pd.DataFrame)
    """One row per proportion: the best method, its margin over B1 [95% CI], clear (Holm)."""
    gain: dict[str, dict] = field(default_factory=dict)
    """Per cell, best config - paper point on the same seeds (tagtune.analysis.gain.paired_gain);
    empty for a study that did not replicate the paper's point."""
    side_by_side: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per (method, proportion): F1 at 0.5, F1 with tuned thresholds and mAP over the replicates,
    mean and sd (tagtune.analysis.stats.side_by_side), on ``test_full/`` where the data has the
    complete truth, else ``test/``."""
    side_by_side_file: Path | None = None
    """``metrics.csv``: :attr:`side_by_side` as written; None without a finished replicate."""

    @property
    def gain_lines(self) -> list[str]:
        """One line per proportion: where the search beat the paper's point, and where not."""
        return gain.proportion_lines(self.gain, stats.method_name)

    def answer_text(self) -> str:
        """The answer table as fixed-width text (what ``tagtune analyze`` prints first), then one
        line per proportion on the gain over the paper's point."""
        text = self.answer.to_string(index=False) if not self.answer.empty else ""
        return "\n".join([text, *self.gain_lines]) if self.gain else text


# Every method's own settings (config.METHOD_PARAMS), one column each, NaN where a method does
# not read it: the best-config table and the hyperparameter figure's panels (LL-R's delta_rel,
# SPLC's tau, ...) read them from here.
HPARAMS: tuple[str, ...] = tuple(dict.fromkeys(n for names in METHOD_PARAMS.values() for n in names))


def _best_frame(best: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for cell, b in best.items():
        cfg = train_config(b["config"])
        rows.append({"cell": cell, "method": cfg.method, "proportion": cfg.missing,
                     "selection_score": b["value"], "trial_id": b["trial_id"], "lr": cfg.lr,
                     **{k: getattr(cfg.params, k) if applies(cfg.method, k) else math.nan for k in HPARAMS}})
    return pd.DataFrame(rows, columns=["cell", "method", "proportion", "selection_score",
                                       "trial_id", "lr", *HPARAMS])


def _gains(table: pd.DataFrame, best: dict[str, dict], metric: str) -> dict[str, dict]:
    """Per cell, the gain of its best config over the paper's point on ``metric``; {} where the study
    has no paper-point replicate and no cell kept it (a study from before they were run)."""
    def rows(phase: str) -> list[dict]:
        t = table[(table["phase"] == phase) & (table["status"] == "complete")]
        if metric not in t:
            return []
        return [{"cell": c, "seed": s, "error": None, metric: v}
                for c, s, v in zip(t["cell"], t["seed"], t[metric], strict=True)]

    kept = [c for c, b in best.items() if b.get("paper_trial_id") == b.get("trial_id")]
    paper = rows(gain.PAPER)
    return gain.cell_gains(rows("replicate"), paper, kept, metric) if paper or kept else {}


def _missing(study: StudyFiles, done: pd.DataFrame) -> list[str]:
    why = {SUMMARY: f"{SUMMARY} is missing: the study has not reached its end",
           REPLICATE: f"{REPLICATE}/ is missing: the replicate phase has not started",
           OPTUNA_JOURNAL: f"{OPTUNA_JOURNAL} is missing: the search phase has not finished "
                      "(no parameter importance)",
           BEST: f"{BEST} is missing: best configs are taken from the finished trials"}
    out = [why[f] for f in study.missing_files if f in why]
    out += [f"{r['cell']}: {r['missing']}" for _, r in done.iterrows() if r["missing"]]
    return out


def _figures(r: AnalysisResult, reps, search, best, study: StudyFiles) -> None:
    d = r.out_dir / "figures"
    d.mkdir(parents=True, exist_ok=True)
    if len(reps):
        r.figures["replicates"] = fig.replicate_boxes(reps, r.metric, d / "replicates.png")
        r.figures["sensitivity"] = fig.sensitivity(r.summary, r.metric, d / "sensitivity.png")
    else:
        r.skipped_figures["replicates, sensitivity"] = "no replicate has finished"
    path = fig.best_hparams(search, best, d / "hyperparameters.png") if len(best) else None
    if path is not None:
        r.figures["hyperparameters"] = path
    else:
        r.skipped_figures["hyperparameters"] = "no LE or MT cell has a best config"
    imp, skipped = param_importances(optuna_store(study.dir), study.cells)
    if len(imp):
        r.figures["importance"] = fig.importance(imp, d / "importance.png")
    if skipped:
        r.skipped_figures["importance"] = "; ".join(f"{c}: {why}" for c, why in skipped.items())
    if len(search):
        r.figures["history"] = fig.history(search, d / "history.png", study.settings.objective)


def analyze(study_dir: str | Path, out: str | Path | None = None, mlflow_uri: str | None = None,
            metric: str | None = None, log_mlflow: bool = True) -> AnalysisResult:
    """Analyse a (finished or partial) study; see the module docstring for what it writes.

    ``metric``: the headline test metric (default: :func:`headline_metric`'s choice -- the
    DCASE macro AUPRC on SONYC-UST's classes, else F1 macro; on the full truth where the data
    has it, else on the observed test labels). A directory that is not a study, or one where
    no trial has reported yet, is a ConfigError (one line).
    """
    study = open_study(study_dir)
    table = trials_table(study)
    metric = headline_metric(table, metric)
    out_dir = output_dir(Path(out).absolute() if out else study.dir / ANALYSIS)

    table_files = [out_dir / "trials.csv"]
    with atomic_path(table_files[0]) as tmp:
        table.to_csv(tmp, index=False)
    if importlib.util.find_spec("pyarrow") is not None:
        table_files.append(out_dir / "trials.parquet")
        with atomic_path(table_files[1]) as tmp:
            table.to_parquet(tmp, index=False)

    best = best_configs(study, table)
    done = completeness(study, table, best)
    reps = table[(table["phase"] == "replicate") & (table["status"] == "complete")]
    reps = reps[reps[metric].notna()] if metric in reps else reps.iloc[0:0]
    search = table[table["phase"] == "search"]
    summary = stats.summary_table(reps, metric) if len(reps) else pd.DataFrame(
        columns=["method", "proportion", "n", "mean", "sd"])
    pairs = stats.paired_comparisons(reps, metric)
    r = AnalysisResult(
        study_dir=study.dir, out_dir=out_dir, report=out_dir / "report.html", metric=metric,
        table=table, table_files=table_files, completeness=done, summary=summary,
        summary_wide=stats.wide_summary(summary), comparisons=pairs,
        conclusions=stats.conclusions(summary, pairs, metric) if len(summary) else [],
        missing=_missing(study, done),
        answer=stats.answer_table(summary, pairs, metric) if len(summary) else pd.DataFrame())
    r.gain = _gains(table, best, metric) if study.settings.paper_point else {}
    done_reps = table[(table["phase"] == "replicate") & (table["status"] == "complete")]
    r.side_by_side = stats.side_by_side(done_reps)
    if len(r.side_by_side):
        r.side_by_side_file = out_dir / "metrics.csv"
        with atomic_path(r.side_by_side_file) as tmp:
            r.side_by_side.to_csv(tmp, index=False)
    best_df = _best_frame(best)
    _figures(r, reps, search, best_df, study)
    if best:
        r.best_dir = out_dir / "best"
        r.exported = write_best(study, table, r.best_dir, metric)

    uri = tracking_uri(study.dir, study.settings, mlflow_uri)
    files = {"figures": list(r.figures.values()),
             "": table_files + ([r.side_by_side_file] if r.side_by_side_file else [])}
    tags = {"metric": metric, "out_dir": str(out_dir)}
    logged = log_analysis(uri if log_mlflow else None, study.settings.name, files, tags)
    r.mlflow_run_id = logged.run_id
    r.mlflow_note = logged.note if log_mlflow else "MLflow logging turned off"
    fingerprint = (study.summary or {}).get("fingerprint")
    atomic.write_text(r.report, report.build(r, report.dataset_summary(study.settings.data, fingerprint),
                                             best_df, study.settings))
    if r.mlflow_run_id is not None:
        log_analysis(uri, study.settings.name, {"": [r.report]}, {})
    return r


__all__ = ["AnalysisResult", "analyze"]
