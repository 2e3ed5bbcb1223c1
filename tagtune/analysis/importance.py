"""Hyperparameter importance per cell, from the study's exported Optuna studies
(``optuna-journal.log``, or an earlier tagtune's ``optuna.db``).

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


SQLITE_HEADER = b"SQLite format 3\x00"


def journal_storage(path: Path):
    """Optuna's journal file at ``path`` as a storage (created by the first write)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    # Its lock: a file beside it made with O_EXCL, while an operation writes (no symlinks: a
    # study's storage may be a filesystem without them).
    return optuna.storages.JournalStorage(
        JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def optuna_storage(path: Path):
    """An Optuna storage on an exported file: SQLite (by its header) or Optuna's journal file."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{path}") if is_sqlite(path) else journal_storage(path)


def param_importances(optuna_file: Path | None, cells: list[str],
                      min_trials: int = MIN_TRIALS) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows (cell, method, proportion, param, importance) for every cell that qualifies;
    and, per cell that does not, why (in words). ``optuna_file``: the study's exported studies
    (tagtune.study.folder.optuna_store)."""
    import optuna

    rows, skipped = [], {}
    if optuna_file is None or not optuna_file.is_file():
        return _frame(rows), {c: "no Optuna studies exported (the search phase did not finish)"
                              for c in cells}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage(optuna_file)
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


__all__ = ["MIN_TRIALS", "is_sqlite", "journal_storage", "optuna_storage", "param_importances"]
