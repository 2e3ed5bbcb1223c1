"""One phase of a study (search or replicate, any round): a new Tune experiment, or the one on disk
continued; StudyInterrupted when Tune returned before every trial ended."""

from __future__ import annotations

import contextlib
import logging
import math

from ray import tune

from tagtune.launch import fusion
from tagtune.launch.counts import analysis, remember
from tagtune.launch.objective import better, metric
from tagtune.launch.ray_start import pending_trials
from tagtune.launch.rebind import rebinding
from tagtune.launch.snapshot_repair import StudyInterrupted, ended_after_snapshot
from tagtune.launch.tracking import drain_senders
from tagtune.launch.wiring import Output, kind, phase_trainable, run_config
from tagtune.study.folder import tunestate

log = logging.getLogger(__name__)


def fit_or_resume(settings, ds, phase, make_tuner, expected: int, out: Output,
                   experiment_id: str) -> tune.ResultGrid:
    """The phase's ``expected`` trials, all ended; StudyInterrupted if Tune returned early."""
    path = settings.study_dir / phase
    ended: dict[str, str] = {}
    best: dict[str, float] = {}
    key, _ = metric(settings)
    if tunestate.restorable(path):  # Tuner.can_restore: a tuner.pkl, maybe of a phase never begun
        # What the display starts from (read only where there is a display).
        for trial in analysis(path).trials if out.display is not None else ():
            last = trial.last_result or {}
            if trial.status in ("TERMINATED", "ERROR"):
                ended[trial.trial_id] = trial.config["cell"]
            value, cell = last.get(key, math.inf), trial.config["cell"]
            if math.isfinite(value) and (cell not in best or better(value, best[cell], settings)):
                best[cell] = value
        # Tune restores the run config, callbacks included, from tuner.pkl as pickled when the
        # phase began; this run's callbacks, for this run's study directory (tagtune.launch.rebind).
        with rebinding(run_config(settings, phase, experiment_id, out).callbacks):
            tuner = tune.Tuner.restore(str(path), trainable=phase_trainable(
                settings, ds, phase, ended_after_snapshot(settings, phase)),
                resume_unfinished=True, resume_errored=True)
    else:
        tuner = make_tuner()
    if out.display is not None:
        out.display.start_phase(kind(phase), expected, ended, best)
    try:
        with out.logs.stdout() if out.logs is not None else contextlib.nullcontext(), \
                pending_trials(settings):
            results = tuner.fit()
    finally:
        fusion.close_registries()  # fused trials' stacks end with their phase
        drain_senders()  # MLflow has what the journal has before the study goes on (or stops)
    if out.display is not None:
        out.display.stop()
    # Ray Tune answers Ctrl-C by saving the experiment and returning what it has: trials
    # still pending or running, or never created. Going on would pick "best" configs and
    # write a summary from half a search.
    # What Tune saved last says it, not its trials in memory: stopping on Ctrl-C, it marks every
    # trial it had started or queued (several, one per slot) TERMINATED.
    recorded = tunestate.recorded_trials(settings.study_dir / phase) or {}
    finished = sum(status not in tunestate.UNFINISHED for status in recorded.values())
    if results.num_terminated + results.num_errors < expected or finished < expected:
        raise StudyInterrupted(settings.study_dir, phase)
    remember(path, results)
    return results
