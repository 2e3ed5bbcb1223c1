"""Hyperparameter importance per cell, from the study's exported Optuna studies (optuna.db).

Optuna 5's default evaluator, PED-ANOVA, compares where the best trials lie (the top 10%
by the objective, here the selection loss) with the whole search space, per parameter.
It needs a handful of completed trials to say anything, and ranking one parameter against
itself says nothing: such cells are skipped, with the reason, rather than drawn as a bar
of 1.0.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from tagtune.study.folder import parse_cell

MIN_TRIALS = 5  # completed trials a cell needs before its importances mean anything


def param_importances(optuna_db: Path, cells: list[str],
                      min_trials: int = MIN_TRIALS) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows (cell, method, proportion, param, importance) for every cell that qualifies;
    and, per cell that does not, why (in words)."""
    import optuna

    rows, skipped = [], {}
    if not optuna_db.is_file():
        return _frame(rows), {c: "no optuna.db (the search phase did not finish)" for c in cells}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{optuna_db}")
    names = set(optuna.get_all_study_names(storage=storage))
    for cell in cells:
        if cell not in names:
            skipped[cell] = "no Optuna study"
            continue
        study = optuna.load_study(study_name=cell, storage=storage)
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        params = sorted({p for t in done for p in t.params})
        if len(params) < 2:
            skipped[cell] = f"only {params[0] if params else 'no parameter'} searched: nothing to rank"
        elif len(done) < min_trials:
            skipped[cell] = f"{len(done)} completed trials (< {min_trials})"
        else:
            with warnings.catch_warnings():  # "importances will be equal" on flat studies
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study)
            method, p = parse_cell(cell)
            rows += [{"cell": cell, "method": method, "proportion": p, "param": k,
                      "importance": float(v)} for k, v in imp.items()]
    return _frame(rows), skipped


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["cell", "method", "proportion", "param", "importance"])


__all__ = ["MIN_TRIALS", "param_importances"]
