"""Tune's experiment snapshot kept whole, without patching Ray: :class:`SnapshotKeeper`.

Ray Tune snapshots an experiment in ``TuneController.save_to_dir``: it writes the experiment
state, then the searcher's state, into the driver's staging folder, then asks every callback
for its state (``Callback.get_state``), and only after that starts copying the folder into
the study (in place: the copy a kill can tear). So at ``get_state`` the staging folder holds
one whole, consistent generation; the keeper copies it into ``PHASE/last-good/`` there
(:func:`tagtune.study.tunestate.keep`) and returns None (it has no state of its own, so Tune
writes no callback file for it). ``study resume`` puts that generation back where the copy in
the phase folder is torn (:func:`tagtune.study.tunestate.repair`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray.tune import Callback

from tagtune.study import tunestate

log = logging.getLogger(__name__)


class SnapshotKeeper(Callback):
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


__all__ = ["SnapshotKeeper"]
