"""Tune's experiment snapshot kept whole, without patching Ray: :class:`SnapshotKeeper`.

Ray Tune snapshots an experiment in ``TuneController.save_to_dir``: it writes the experiment
state, then the searcher's state, into the driver's staging folder, then asks every callback
for its state (``Callback.get_state``), and only after that starts copying the folder into
the study (in place: the copy a kill can tear). So at ``get_state`` the staging folder holds
one whole, consistent generation; the keeper copies it into ``PHASE/last-good/`` there
(:func:`tagtune.study.folder.tunestate.keep`) and returns None (it has no state of its own, so Tune
writes no callback file for it). ``study resume`` puts that generation back where the copy in
the phase folder is torn (:func:`tagtune.study.folder.tunestate.repair`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ray.tune import Callback

from tagtune.launch.rebind import Rebindable
from tagtune.study.folder import tunestate

log = logging.getLogger(__name__)


class SnapshotKeeper(Rebindable, Callback):
    """After every Tune snapshot, a whole copy of it in ``phase_dir/last-good/<n>/``."""

    def __init__(self, phase_dir: str | Path):
        self.phase_dir = Path(phase_dir)
        self._staging: Path | None = None

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        # The driver's staging folder is only known through a trial's storage context (every
        # trial of the experiment shares it); before the first trial there is nothing to keep.
        if self._staging is None and trials:
            self._staging = Path(trials[0].storage.experiment_driver_staging_path)

    def get_state(self) -> None:
        if self._staging is not None and self._staging.is_dir():
            try:
                tunestate.keep(self._staging, self.phase_dir)
            except OSError as e:  # a full disk must not stop the study; the last copy stays
                log.warning("Tune snapshot not kept in %s (%s)", self.phase_dir / tunestate.LAST_GOOD, e)
        return None

    def __getstate__(self) -> dict:
        # Pickled into Tune's tuner.pkl: the staging folder belongs to this driver only.
        return {"phase_dir": self.phase_dir, "_staging": None}


class CheckpointPruner(Rebindable, Callback):
    """A trial's last ``keep`` checkpoints kept once it ends, the older ones removed.

    Tune's own pruning (``CheckpointConfig(num_to_keep=...)``) forces a snapshot of the whole
    experiment every ``num_to_keep`` checkpoints of any trial -- each one serialising every trial
    of the phase, and copied into ``last-good/`` -- so a phase of short trials spent its time
    snapshotting (O(trials^2)). Here Tune keeps every checkpoint while a trial runs and snapshots
    on its own clock; an ended trial's older checkpoints go (a replicate reuses the newest, a
    resumed errored trial starts from it)."""

    def __init__(self, keep: int = 2):
        self.keep = keep

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._prune(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._prune(trial)

    def _prune(self, trial) -> None:
        trial_dir = Path(trial.path)
        done = sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir())
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


__all__ = ["CheckpointPruner", "SnapshotKeeper"]
