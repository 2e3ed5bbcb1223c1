"""Early stopping per cell: one ASHA per (method, proportion) inside one Tune experiment.

A single ASHA over the whole study would compare trials of different cells at the
same rung: B0's validation loss is biased by its implicit negatives, so a global
ASHA would cut every B0 trial short and starve that cell while still spending its
budget. Each cell gets its own ASHA (the same max_t, grace period and reduction
factor), so a trial only competes with trials of its own cell, as in the paper
where every method was tuned on its own.

The time axis is the trainable's ``budget`` (epochs spent on the model being
selected; 0 while LE trains its teacher), see ``tagtune.launch.trainable``.
"""

from __future__ import annotations

import math
import pickle

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from tagtune.study import atomic

TIME_ATTR = "budget"


def rungs(max_t: int, grace_period: int, reduction_factor: float) -> tuple[float, ...]:
    """The budgets ASHA decides at (its one bracket's milestones, as Ray computes them): where a
    trial must report, so that ASHA records the very value it would with a report every epoch."""
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return tuple(grace_period * reduction_factor ** k for k in range(n))


class CellASHA(FIFOScheduler):
    """ASHA, one independent instance per ``trial.config["cell"]``.

    metric and mode are not arguments: they are set once, on ``tune.TuneConfig``,
    and arrive here through ``set_search_properties``.
    """

    def __init__(self, max_t: int, grace_period: int = 1, reduction_factor: float = 3,
                 earlier: dict[str, dict[str, list[tuple[float, float]]]] | None = None):
        super().__init__()
        self.max_t, self.grace_period, self.reduction_factor = max_t, grace_period, reduction_factor
        self._metric: str | None = None
        self._mode: str | None = None
        self._cells: dict[str, AsyncHyperBandScheduler] = {}
        # A later round of an extended study: per cell, per earlier trial, its (budget, metric)
        # reports. Fed into the cell's rungs first, so that the new trials are cut against the
        # same rungs as if one study had run them all.
        self._earlier = earlier or {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return all(s.set_search_properties(metric, mode, **spec) for s in self._cells.values())

    def _asha(self, trial) -> AsyncHyperBandScheduler:
        cell = trial.config["cell"]
        if cell not in self._cells:
            self._cells[cell] = AsyncHyperBandScheduler(
                time_attr=TIME_ATTR, metric=self._metric, mode=self._mode, max_t=self.max_t,
                grace_period=self.grace_period, reduction_factor=self.reduction_factor,
            )
            self._seed(self._cells[cell], self._earlier.get(cell, {}))
        return self._cells[cell]

    def _seed(self, asha: AsyncHyperBandScheduler, trials: dict[str, list[tuple[float, float]]]) -> None:
        """Record earlier trials' reports at the rungs they reached (as ASHA recorded them then)."""
        for trial_id, reports in trials.items():
            bracket, trial = asha._brackets[0], _Earlier(trial_id)  # one bracket: ASHA's default
            for t, value in reports:
                if t < self.max_t:  # at max_t ASHA stops without recording
                    bracket.on_result(trial, t, asha._metric_op * value)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        asha = self._asha(trial)
        if trial.trial_id not in asha._trial_info:  # a trial restored after a driver restart
            asha.on_trial_add(tune_controller, trial)
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        asha = self._asha(trial)
        if trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        stopped = sum(s._num_stopped for s in self._cells.values())
        return f"Per-cell ASHA over {len(self._cells)} cells: {stopped} trials stopped early"

    def save(self, checkpoint_path: str) -> None:
        atomic.write_bytes(checkpoint_path, pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class _Earlier:
    """An earlier round's trial as a bracket sees it: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


__all__ = ["TIME_ATTR", "CellASHA", "TrialScheduler", "rungs"]
