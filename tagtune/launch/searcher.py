"""One Ray Tune experiment, one Optuna study per cell: :class:`CellSearcher`.

A tagtune study is a grid of cells, (method, missing-label proportion). Every cell is
tuned on its own, as in the paper where each method was tuned separately: it has its own
Optuna study (TPE, its own seed, the paper's point enqueued first) and its own budget of
trials (the same for every cell in a study; a mapping of cell id to budget may differ). One
Tune experiment runs them all, so the cluster stays busy: ``suggest`` deals trials out round
robin over the cells that still have budget.

How Optuna sees a trial (the issue: Ray's OptunaSearch tells an ASHA-stopped trial
COMPLETE with its partial score, so TPE learns from low-budget losses as if they were
final, and the cheap, cut-short configurations look as good as full runs):
- the trainable's last report has ``complete`` True: told COMPLETE with the best value of
  the metric over its epochs, i.e. the model that model selection (by validation loss)
  would keep;
- stopped by the scheduler before that (``complete`` never True): told PRUNED. Its
  per-epoch values were reported as intermediate values, and Optuna 5's TPE ranks PRUNED
  trials below every COMPLETE one and among themselves by (last step reached, last value)
  (``optuna.samplers._tpe.sampler._split_trials`` / ``_get_pruned_trial_score``): a
  budget-fair order that never compares a 2-epoch loss with a 100-epoch one;
- errored, or ended without one finite metric value (e.g. a pending trial removed):
  told FAIL, which TPE ignores: there is nothing to learn from it.
Intermediate values are reported at ``training_iteration``, comparable within a cell
(one method). Non-finite values (e.g. inf while LE trains its teacher) are not reported.
The metric should be a model-selection score, e.g. the trainable's ``val/best_loss``.

Where metric and mode live: on ``tune.TuneConfig``, set once by the launcher. Tune hands
them to the scheduler and to this searcher through ``set_search_properties``. So the
constructor's ``metric``/``mode`` default to None ("from TuneConfig"); without Tune (unit
tests) None falls back to ``val/loss``/``min``. Given in both places, the same value is
accepted and a different one is an error rather than a silent override.

Resume: ``save``/``restore`` pickle the whole state (in-memory Optuna studies, samplers'
random states, the trial_id -> Optuna trial mapping), so after ``Tuner.restore`` the
budgets stay exact and trials still running are told when they finish.
"""

from __future__ import annotations

import logging
import math
import pickle
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tagtune.launch.trainable import EARLIER
from tagtune.search_spaces import SPACES, Ranges, paper_point
from tagtune.study import atomic
from tagtune.study.config import METHODS, ConfigError, check_proportion
from tagtune.study.folder import cell_id, parse_cell

logger = logging.getLogger(__name__)

COMPLETE_KEY = "complete"  # set True by the trainable on a report after which nothing is left
STEP_KEY = "training_iteration"
RESERVED = ("method", "missing", "cell", "optuna_trial")  # set per trial; not in base_config
DEFAULT_METRIC, DEFAULT_MODE = "val/loss", "min"  # only when neither Tune nor the caller sets them


@dataclass(frozen=True)
class Cell:
    """One cell of the study grid: a method at a proportion of removed training labels."""

    method: str
    """One of METHODS (tagtune.study.methods)."""
    missing: float
    """Proportion of observed training labels removed, in [0, 1)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError("cell.method", f"unknown method {self.method!r}")
        check_proportion(self.missing, "cell.missing")

    @property
    def id(self) -> str:
        """Stable name, e.g. ``mt@0.40``: Optuna study name, trial config ``cell``."""
        return cell_id(self.method, self.missing)

    @classmethod
    def parse(cls, cell: str) -> Cell:
        return cls(*parse_cell(cell))


@dataclass
class _Open:
    """A handed-out trial that Optuna has not been told the end of yet."""

    cell: str
    trial: optuna.Trial
    best: float | None = None
    last_step: int = 0
    complete: bool = False


class CellSearcher(Searcher):
    """Ray Tune searcher over a grid of cells, one Optuna TPE study and budget per cell."""

    def __init__(self, cells: list[Cell], trials_per_cell: int | Mapping[str, int],
                 ranges: Ranges | None = None, preset: str = "openmic", seed: int = 0,
                 metric: str | None = None, mode: str | None = None,
                 base_config: dict[str, Any] | None = None, n_startup_trials: int = 10,
                 block: int = 1):
        super().__init__(metric=metric, mode=mode)
        ids = [c.id for c in cells]
        if not cells or len(set(ids)) != len(ids):
            raise ConfigError("cells", f"need distinct cells, got {ids}")
        # One budget for every cell (a study), or one per cell id (more trials where more is searched).
        budgets = (dict(trials_per_cell) if isinstance(trials_per_cell, Mapping)
                   else dict.fromkeys(ids, trials_per_cell))
        if set(budgets) != set(ids) or min(budgets.values()) < 1:
            raise ConfigError("trials_per_cell", f"must be >= 1 for each of {ids}, got {trials_per_cell}")
        clash = sorted(set(base_config or {}) & set(RESERVED))
        if clash:
            raise ConfigError(f"base_config.{clash[0]}", "set per cell by the searcher")
        self._cells = {c.id: c for c in cells}  # insertion order is the round-robin order
        self._budgets = budgets
        self._ranges = ranges or Ranges()
        self._paper = {c.id: paper_point(c.method, preset, self._ranges) for c in cells}
        self._seed = seed
        self._base = dict(base_config or {})
        self._n_startup = n_startup_trials
        # One in-memory storage holds every cell's study (named by cell id); the studies
        # are made at the first suggest, once Tune has had its say on the mode.
        self._storage = optuna.storages.InMemoryStorage()
        self._studies: dict[str, optuna.Study] = {}
        self._open: dict[str, _Open] = {}
        self._trials: dict[str, tuple[str, int]] = {}  # Tune trial_id -> (cell id, Optuna number)
        self._next = 0  # index of the cell to try first on the next suggest
        # Fused trials: a cell's trials are dealt ``block`` in a row, so that they can train as one
        # stack; Optuna asks them one after the other with the constant liar (a batch ask).
        self._block, self._dealt = block, 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec) -> bool:
        for name, new in (("metric", metric), ("mode", mode)):
            old = getattr(self, f"_{name}")
            if new is not None and old is not None and new != old:
                raise ValueError(f"CellSearcher {name} {old!r} differs from TuneConfig's "
                                 f"{new!r}: set it once, on TuneConfig")
        self._metric, self._mode = metric or self._metric, mode or self._mode
        # False: the search space is ours (Ranges + per-method spaces), not Tune's
        # param_space; Tune then raises if param_space holds search domains.
        return False

    # -- handing out trials -------------------------------------------------------------

    def _setup(self) -> None:
        if self._studies and all(cid in self._studies for cid in self._cells):
            return
        self._metric, self._mode = self._metric or DEFAULT_METRIC, self._mode or DEFAULT_MODE
        for cid in self._cells:
            if cid in self._studies:  # carried over from an earlier round: it has its trials
                continue
            # multivariate TPE models lr x gamma (or lr x alpha x beta) jointly: they interact.
            # constant_liar (Optuna 5's default) treats running trials as bad, so trials dealt
            # out in parallel spread out instead of piling on the same point.
            sampler = optuna.samplers.TPESampler(
                seed=zlib.crc32(f"{self._seed}:{cid}".encode()), multivariate=True,
                n_startup_trials=self._n_startup, constant_liar=True)
            study = optuna.create_study(storage=self._storage, sampler=sampler, study_name=cid,
                                        direction="minimize" if self._mode == "min" else "maximize")
            study.enqueue_trial(self._paper[cid], user_attrs={"paper_point": True})
            self._studies[cid] = study

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next cell's next trial config, round robin; FINISHED once every budget is out.

        Never None: each cell's next trial can be asked at once (see constant_liar).
        """
        self._setup()
        ids = list(self._cells)
        block = getattr(self, "_block", 1)  # a searcher saved before fused trials: 1
        for k in range(len(ids)):
            cid = ids[(self._next + k) % len(ids)]
            if len(self._handed_out(cid)) < self._budgets[cid]:
                self._dealt = (getattr(self, "_dealt", 0) + 1) if k == 0 else 1
                if self._dealt >= block:  # the cell's block is out: the next cell's turn
                    self._next, self._dealt = (self._next + k + 1) % len(ids), 0
                else:
                    self._next = (self._next + k) % len(ids)
                return self._ask(trial_id, cid)
        return Searcher.FINISHED

    def _ask(self, trial_id: str, cid: str) -> dict[str, Any]:
        cell, trial = self._cells[cid], self._studies[cid].ask()
        params = SPACES[cell.method](trial, self._ranges)
        trial.set_user_attr("tune_trial_id", trial_id)
        trial.set_user_attr("config", params)  # trial-config values (alpha, not 1 - alpha)
        self._open[trial_id] = _Open(cid, trial)
        self._trials[trial_id] = (cid, trial.number)
        # Searched values win over base_config's (which may carry a preset's gamma, ...).
        # optuna_trial: the number optuna-dashboard shows, and the MLflow run's name (mt@0.40 #7).
        return {**self._base, "method": cell.method, "missing": cell.missing, "cell": cid,
                "optuna_trial": trial.number, **params}

    # -- hearing back -------------------------------------------------------------------

    def _better(self, a: float, b: float | None) -> bool:
        return b is None or (a < b if self._mode == "min" else a > b)

    def _observe(self, t: _Open, result: dict[str, Any]) -> None:
        # A report carries the epochs held since the one before (tagtune.launch.trainable):
        # Optuna hears every epoch, as if each had been a report.
        for earlier in result.get(EARLIER, ()):
            self._observe_one(t, earlier)
        self._observe_one(t, result)

    def _observe_one(self, t: _Open, result: dict[str, Any]) -> None:
        t.complete = t.complete or bool(result.get(COMPLETE_KEY, False))
        value, step = result.get(self._metric), result.get(STEP_KEY)
        if value is None or step is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self._better(value, t.best):
            t.best = value
        # A trial restarted from scratch repeats steps: Optuna keeps the first report of
        # a step (and warns on a repeat), so only new steps are reported.
        if int(step) > t.last_step:
            t.trial.report(value, step=int(step))
            t.last_step = int(step)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        t = self._open.get(trial_id)
        if t is not None:
            self._observe(t, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        t = self._open.pop(trial_id, None)
        if t is None:
            if trial_id in self._trials:
                logger.warning("CellSearcher: trial %s was already told; ignored", trial_id)
            return
        # A trial stopped by the scheduler never had its last result passed to
        # on_trial_result: Tune hands it over here.
        if result:
            self._observe(t, result)
        if error or t.best is None:  # errored, or never produced a usable value
            state, value = TrialState.FAIL, None
        elif t.complete:
            state, value = TrialState.COMPLETE, t.best
        else:
            state, value = TrialState.PRUNED, None  # Optuna keeps the last reported value
        self._studies[t.cell].tell(t.trial, value, state=state)

    # -- what was found -----------------------------------------------------------------

    def _handed_out(self, cid: str) -> list[optuna.trial.FrozenTrial]:
        # Not the enqueued paper point while it waits: it is a trial only once asked.
        return [t for t in self._studies[cid].get_trials(deepcopy=False)
                if t.state != TrialState.WAITING] if self._studies else []

    def _done(self, cid: str) -> tuple[list[optuna.trial.FrozenTrial], optuna.trial.FrozenTrial | None]:
        trials = self._handed_out(cid)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        pick = min if self._mode == "min" else max
        return trials, (pick(complete, key=lambda t: t.value) if complete else None)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per cell id: trials handed out, completed, pruned, failed, running, and the best
        COMPLETE trial (value, config values, Tune trial id); pruned trials never count as
        best, their values come from a smaller budget."""
        out = {}
        for cid in self._cells:
            trials, best = self._done(cid)
            n = {s: sum(t.state == s for t in trials) for s in TrialState}
            out[cid] = {
                "handed_out": len(trials), "completed": n[TrialState.COMPLETE],
                "pruned": n[TrialState.PRUNED], "failed": n[TrialState.FAIL],
                "running": n[TrialState.RUNNING],
                "best_value": best.value if best else None,
                "best_params": dict(best.user_attrs["config"]) if best else None,
                "best_trial_id": best.user_attrs["tune_trial_id"] if best else None,
            }
        return out

    def best_config(self, cell: Cell | str) -> dict[str, Any] | None:
        """The full trial config of the cell's best COMPLETE trial (None before one)."""
        cid = cell.id if isinstance(cell, Cell) else cell
        _, best = self._done(cid)
        if best is None:
            return None
        c = self._cells[cid]
        return {**self._base, "method": c.method, "missing": c.missing, "cell": cid,
                "optuna_trial": best.number, **best.user_attrs["config"]}

    def export(self, target: str | optuna.storages.BaseStorage) -> list[str]:
        """Copy every cell's study into an Optuna storage (an RDB URL such as
        ``sqlite:///abs/optuna.db``, or a storage: the study's journal file) under study_name =
        cell id, replacing an earlier export; returns the study names."""
        self._setup()
        storage = optuna.storages.RDBStorage(target) if isinstance(target, str) else target
        existing = set(optuna.get_all_study_names(storage=storage))
        for cid in self._studies:
            if cid in existing:
                optuna.delete_study(study_name=cid, storage=storage)
            optuna.copy_study(from_study_name=cid, from_storage=self._storage,
                              to_storage=storage, to_study_name=cid)
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()  # no connection left open on the file (it may be renamed next)
        return list(self._studies)

    # -- a later round (tagtune study extend) --------------------------------------------

    def continue_from(self, earlier: CellSearcher) -> dict[str, int]:
        """Carry ``earlier``'s Optuna studies (a finished round's searcher) into this one, so each
        existing cell's TPE sees every earlier trial and its paper point is not asked again; a
        cell new here gets a fresh study (its paper point first). Returns, per cell, the trials
        this round adds: its budget less what ``earlier`` already handed out."""
        self._storage = earlier._storage
        self._studies = {cid: s for cid, s in earlier._studies.items() if cid in self._cells}
        self._trials = dict(earlier._trials)  # Tune ids are unique across experiments
        self._metric, self._mode = self._metric or earlier._metric, self._mode or earlier._mode
        added = {cid: self._budgets[cid] - len(self._handed_out(cid)) if cid in self._studies
                 else self._budgets[cid] for cid in self._cells}
        bad = {cid: n for cid, n in added.items() if n < 0}
        if bad:
            raise ConfigError("trials", f"fewer than the trials already run in {sorted(bad)}")
        return added

    # -- resume -------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def set_state(self, state: dict[str, Any]) -> None:
        # The checkpoint is the truth: cells, budgets and studies all come from it.
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        atomic.write_bytes(checkpoint_path, pickle.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


__all__ = ["COMPLETE_KEY", "DEFAULT_METRIC", "DEFAULT_MODE", "STEP_KEY", "Cell", "CellSearcher"]
