"""Figures and parameter importance on hand-built results (no study run, no Ray)."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from tagtune.analysis import figures, stats
from tagtune.analysis.importance import journal_storage, param_importances
from tagtune.study.folder import OPTUNA_DB, OPTUNA_JOURNAL, optuna_store

METRIC = "test/f1_macro"
METHODS, PROPORTIONS = ("b0", "b1", "le", "mt"), (0.0, 0.2, 0.4, 0.8)
PNG = b"\x89PNG\r\n\x1a\n"


def fake_table(trials: int = 8, seeds: int = 5) -> pd.DataFrame:
    """A tidy table shaped like tagtune.analysis.table's, values from a fixed generator."""
    rng = np.random.default_rng(0)
    rows = []
    for m in METHODS:
        for p in PROPORTIONS:
            cell = f"{m}@{p:.2f}"
            for t in range(trials):
                status = "complete" if t % 3 else "stopped_early"
                rows.append({"phase": "search", "cell": cell, "method": m, "proportion": p,
                             "seed": 0, "status": status, "trial_number": t + 1,
                             "val/best_loss": 0.3 + 0.2 * p + rng.uniform(0, 0.05),
                             "gamma": rng.uniform(1, 99) if m == "le" else np.nan,
                             "alpha": 1 - 10 ** rng.uniform(-4, -1) if m == "mt" else np.nan,
                             "beta": rng.uniform(0, 10) if m == "mt" else np.nan})
            for s in range(seeds):
                rows.append({"phase": "replicate", "cell": cell, "method": m, "proportion": p,
                             "seed": s, "status": "complete",
                             METRIC: 0.6 - 0.3 * p * (1.5 if m == "b0" else 1) + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


def best_frame(table: pd.DataFrame) -> pd.DataFrame:
    done = table[(table.phase == "search") & (table.status == "complete")]
    return done.loc[done.groupby("cell")["val/best_loss"].idxmin()]


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_every_figure_is_drawn_as_a_png(tmp_path):
    table = fake_table()
    reps, search = table[table.phase == "replicate"], table[table.phase == "search"]
    summary = stats.summary_table(reps, METRIC)
    assert_png(figures.replicate_boxes(reps, METRIC, tmp_path / "boxes.png"))
    assert_png(figures.sensitivity(summary, METRIC, tmp_path / "sens.png"))
    assert_png(figures.best_hparams(search, best_frame(table), tmp_path / "hp.png"))
    assert_png(figures.history(search, tmp_path / "hist.png"))


def test_hyperparameter_figure_only_when_le_or_mt_ran(tmp_path):
    table = fake_table()
    baselines = table[table.method.isin(["b0", "b1"])]
    assert figures.best_hparams(baselines, best_frame(baselines), tmp_path / "hp.png") is None
    only_le = table[table.method == "le"]
    assert_png(figures.best_hparams(only_le, best_frame(only_le), tmp_path / "le.png"))


def make_optuna_db(path, n_trials: dict[str, int], journal: bool = False) -> None:
    """One study per cell; the loss depends on lr (LE) or beta (MT) only. In SQLite, as an
    earlier tagtune exported them, or (``journal``) in Optuna's journal file, as a study does now."""
    storage = journal_storage(path) if journal else f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for cell, n in n_trials.items():
        method = cell.split("@")[0]
        study = optuna.create_study(study_name=cell, storage=storage,
                                    sampler=optuna.samplers.RandomSampler(seed=1))

        def objective(trial, method=method):
            lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
            if method == "le":
                trial.suggest_float("gamma", 1, 99)
                return (np.log10(lr) + 3) ** 2
            if method == "mt":
                trial.suggest_float("one_minus_alpha", 1e-4, 1e-1, log=True)
                return (trial.suggest_float("beta", 0, 10) - 3) ** 2
            return lr

        study.optimize(objective, n_trials=n)


@pytest.mark.parametrize("name", [OPTUNA_JOURNAL, OPTUNA_DB])
def test_importance_ranks_the_parameter_that_matters(tmp_path, name):
    make_optuna_db(tmp_path / name, {"le@0.40": 30, "mt@0.40": 30, "b1@0.40": 30, "mt@0.80": 3},
                   journal=name == OPTUNA_JOURNAL)
    db = optuna_store(tmp_path)
    assert db == tmp_path / name
    cells = ["b1@0.40", "le@0.40", "mt@0.40", "mt@0.80", "le@0.80"]
    imp, skipped = param_importances(db, cells)
    by = imp.set_index(["cell", "param"])["importance"]
    assert by["le@0.40"].idxmax() == "lr" and by["mt@0.40"].idxmax() == "beta"
    assert set(by["mt@0.40"].index) == {"lr", "one_minus_alpha", "beta"}
    assert by["mt@0.40"].sum() == pytest.approx(1.0)
    assert skipped == {"b1@0.40": "only lr searched: nothing to rank",
                       "mt@0.80": "3 completed trials (< 5)", "le@0.80": "no Optuna study"}
    assert_png(figures.importance(imp, tmp_path / "imp.png"))


def test_importance_without_optuna_db(tmp_path):
    assert optuna_store(tmp_path) is None
    imp, skipped = param_importances(optuna_store(tmp_path), ["le@0.40"])
    assert imp.empty and "no Optuna studies exported" in skipped["le@0.40"]
    assert not list(tmp_path.iterdir())  # reading never creates a store
