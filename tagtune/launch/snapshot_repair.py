"""Before a phase is resumed: Tune's snapshot checked, a torn one put back from ``last-good/``, and the
trials that ended after that snapshot (the journal has their end) found."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tagtune.launch.tracking import (
    journal_outcomes,
)
from tagtune.study.config import ConfigError
from tagtune.study.folder import (
    JOURNAL,
    StudySettings,
    tunestate,
)

log = logging.getLogger(__name__)


class StudyInterrupted(Exception):
    """The study stopped before its end (Ctrl-C: Ray Tune saved its state); resume continues it."""

    def __init__(self, study_dir: Path, phase: str):
        self.study_dir = study_dir
        saved = resumable(study_dir / phase)
        state = "its state saved" if saved else "its state could not be saved whole (the last " \
            "snapshot is torn and none is kept)"
        then = f"continue with: tagtune study resume {study_dir}" if saved else \
            "a resume will start that phase again"
        super().__init__(f"{study_dir}: interrupted in the {phase} phase, {state}; {then}")


def resumable(phase_dir: Path) -> bool:
    """Whether a resume can continue ``phase_dir``: a whole newest snapshot, or a kept one."""
    if tunestate.newest(phase_dir, tunestate.EXPERIMENT_STATE) is not None and not tunestate.torn(phase_dir):
        return True
    return any(tunestate.whole(g) for g in tunestate.generations(phase_dir))


def restore_checked(settings: StudySettings, phase: str) -> None:
    """Check what Tuner.restore is about to read; where an interruption tore it, put the last
    whole snapshot back (one line says so); where none is whole, refuse in one line."""
    if not (settings.study_dir / phase).is_dir():
        return
    try:
        repaired = tunestate.repair(settings.study_dir / phase)
    except tunestate.Unrecoverable as e:
        raise ConfigError(e.path.name, f"torn by the interruption ({e.why}) and no whole snapshot "
                          f"is kept in {phase}/{tunestate.LAST_GOOD}/ (a study started before "
                          f"tagtune kept them): this study cannot be resumed; its finished runs "
                          f"stay in MLflow and {JOURNAL}; run it again under a new --name",
                          where=str(e.path.parent)) from None
    if repaired is not None:  # said on the terminal whatever the verbosity: the study changed
        since = len(ended_after_snapshot(settings, phase)) if repaired.generation else 0
        print(f"note: {repaired.message(phase, since)}", file=sys.stderr)


def ended_after_snapshot(settings: StudySettings, phase: str) -> dict[str, dict]:
    """The trials the snapshot a resume starts from has not seen end but the journal has (they
    ended between that snapshot and the interruption), with their last reported metrics."""
    recorded = tunestate.recorded_trials(settings.study_dir / phase) or {}
    outcomes = journal_outcomes(settings.study_dir / JOURNAL)
    return {tid: outcomes[tid][1] for tid, status in recorded.items()
            if status in tunestate.UNFINISHED and tid in outcomes and outcomes[tid][0] == "FINISHED"}
