"""The Ray Tune trainable: one function for every method; the config names the method.

``train_trial(config, dataset, teacher_cache, study_dir)`` wraps :func:`tagtune.study.fit.train.fit`.
The dataset arrives through ``tune.with_parameters``: one copy in Ray's object store per
node, its arrays mapped read-only into every worker of the node (zero-copy), not one read
per trial.

LE's teacher: with ``teacher_cache`` (a directory in the study's storage) stage 1 is not
trained by every LE trial: :class:`tagtune.study.fit.teachers.TeacherCache` trains it once per
(data, proportion, seed, teacher settings, ``le_teacher_lr`` among them) and hands it to
``fit(..., le_teacher=...)``. Such a trial reports only its student's epochs: ``epoch``
runs E+1..2E (the counter still counts the teacher's stage) and ``training_iteration``
1..E. Without it (``share_le_teacher: false``) the trial trains its own teacher with its
``le_teacher_lr`` (or lr) and reports both stages, epochs 1..2E.

What every report carries, identical keys for every method:
- the fit loop's epoch logs (``epoch``, ``stage``, ``train/loss``, ``val/loss``, ``val/...``);
- ``budget``: epochs spent on the model that will be selected. It is the scheduler's
  time axis. For LE it is 0 during stage 1 (the teacher, when the trial trains it) and
  counts the student's epochs in stage 2, so ASHA compares LE's student after k epochs
  with B1 after k epochs: like with like, shared teacher or not. ``epoch`` stays one
  counter across both stages. LE+MT (two stages too) reports the same way; its stage 1
  is never shared (it depends on the searched alpha and beta).
- ``val/best_loss`` (objective ``val/loss``; ``val/best_auprc_macro`` ... for the others,
  tagtune.study.objective.score_key): the best value of the objective in the current stage
  so far, i.e. the model-selection criterion: what the scheduler and the searcher optimise
  (inf -- -inf for a maximised objective -- while LE trains its teacher, which is never the
  selected model);
- ``complete``: True on a report after which the run has nothing left to train.

A checkpoint (the fit loop's complete state) is attached every ``checkpoint_every`` epochs, once
``checkpoint_s`` seconds have passed since the trial's last one, and on the last epoch; a
restarted trial resumes from ``tune.get_checkpoint()``.
In the replicate phase, a last report adds the test metrics of the selected model.

Which epochs go to Tune as a report of their own (``report_at``, given by the study): only
those a decision needs -- an ASHA rung's budget, a checkpoint, the end -- and any epoch
``EVERY_S`` after the last report (so that the display moves with slow epochs; a fused trial's,
the stack's size times that: its stack's members share one slot). The epochs
between ride in the next report, under ``EARLIER``, each with the keys above and its own
``training_iteration`` (the count of epochs reported, as Tune's own counter would be had every
epoch been a report): the journal, MLflow and Optuna see every epoch, once; ASHA sees the same
value at each rung. A report costs the driver tens of milliseconds (its callbacks, the
searcher, the scheduler, Tune's files): for fast epochs it is what sets a study's pace.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

from tagtune.study.data import Dataset
from tagtune.study.folder import train_config  # Ray-free there: the analysis reads configs
from tagtune.study.methods import shares_teacher, stages
from tagtune.study.objective import from_loss, of_logs, score_key

TRIAL_STATE = "trial_state.json"
# On a report that repeats a result the study already has (see ``ended`` below): not logged again.
REPLAYED = "replayed"
# The epochs held since the last report, carried by the next one (oldest first).
EARLIER = "earlier_epochs"
STEP = "training_iteration"  # set by the reporter itself: Tune counts reports, not epochs
# An epoch this long after the last report is reported, whatever it decides: a slot's trial's
# cadence. Trials that share a slot (a fused stack's members) report as many times less often, so
# that the driver's reports a second do not grow with the stack: at 2 s each, the members of two
# stacks of 16 (200 x 20 epochs on 2 cores) made 7.6 reports each where decisions needed ~2.
EVERY_S = 2.0


class Reporter:
    """What a trial reports after each epoch and when it checkpoints, for a trial trained alone or
    fused (tagtune.launch.fusion); its state rides in the checkpoint (TRIAL_STATE), so a resumed
    trial reports exactly as before."""

    def __init__(self, config: dict[str, Any], report_at: tuple[float, ...] | None = None,
                 report_every_s: float = EVERY_S):
        cfg = train_config(config)
        self.every = int(config.get("checkpoint_every", 5))
        # A config written before the setting: every checkpoint_every epochs, as it ran.
        self.every_s = float(config.get("checkpoint_s", 0.0))
        self._saved_at = time.monotonic()
        self.names = stages(cfg.method)
        self.total = cfg.epochs * len(self.names)
        # Only the last stage trains the model that will be selected (LE's stage 1 is its teacher).
        self.before_last = (len(self.names) - 1) * cfg.epochs
        # The budgets a scheduler decides at (ASHA's rungs: the first epoch at or past each);
        # None: every epoch is a report.
        self.report_at = None if report_at is None else {math.ceil(r) for r in report_at}
        self.held: list[dict[str, Any]] = []
        self.report_every_s = report_every_s
        self._reported_at = time.monotonic()
        self.objective = cfg.objective  # the reported score follows the study's objective
        self.state: dict[str, Any] = {"stage": None, "best": math.inf, "last": None, "step": 0}

    def metrics(self, logs: dict[str, Any]) -> dict[str, Any]:
        """The report of an epoch, from the fit loop's logs."""
        state = self.state
        if logs["stage"] != state["stage"]:
            state.update(stage=logs["stage"], best=math.inf)
        last_stage = logs["stage"] == self.names[-1]
        if last_stage:  # an earlier stage's network is not a candidate model: no score yet
            state["best"] = min(state["best"], of_logs(logs, self.objective))
        epoch = int(logs["epoch"])
        state["step"] += 1
        metrics = {
            **{k: v for k, v in logs.items() if isinstance(v, int | float | str)},
            "budget": epoch - self.before_last if last_stage else 0,
            score_key(self.objective): from_loss(state["best"], self.objective),
            "complete": epoch >= self.total,
            STEP: state["step"],
        }
        state["last"] = metrics
        return metrics

    def due(self, epoch: int) -> bool:
        """Whether the state after ``epoch`` goes with its report as a checkpoint (asked once an
        epoch: a yes starts the wait for the next)."""
        if epoch >= self.total or (epoch % self.every == 0
                                   and time.monotonic() - self._saved_at >= self.every_s):
            self._saved_at = time.monotonic()
            return True
        return False

    def needed(self, metrics: dict[str, Any]) -> bool:
        """Whether an epoch is reported now (else it is held for the next report)."""
        return (self.report_at is None or metrics["complete"]
                or metrics["budget"] in self.report_at
                or time.monotonic() - self._reported_at >= self.report_every_s)

    def reports_now(self, metrics: dict[str, Any], checkpoint: bool) -> bool:
        """Whether the epoch goes to Tune now, as :meth:`epoch` decides (with a checkpoint, always);
        for a fused member's stack, which answers the member at that epoch."""
        if checkpoint or self.needed(metrics):
            self._reported_at = time.monotonic()
            return True
        return False

    def epoch(self, metrics: dict[str, Any], save: Callable[[Path], Any] | None = None,
              now: bool | None = None) -> None:
        """An epoch's metrics: reported (with ``save``, as a checkpoint: given where ``due``) or held
        for the next report. ``now``: whether it is reported, decided already (a fused member's
        stack answers at the epoch to report: :meth:`reports_now`); None: :meth:`needed` decides."""
        if save is not None or (self.needed(metrics) if now is None else now):
            self.report(metrics, save)
        else:
            self.held.append(metrics)

    def report(self, metrics: dict[str, Any], save: Callable[[Path], Any] | None = None) -> None:
        """Report to Tune, carrying the epochs held; with ``save`` (it writes the fit's state into a
        directory) as a checkpoint of that state and the reporter's own."""
        if self.held:
            metrics = {**metrics, EARLIER: self.held}
            self.held = []
        self._reported_at = time.monotonic()
        if save is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp))
            (Path(tmp) / TRIAL_STATE).write_text(json.dumps(self.state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    @contextmanager
    def resumed(self, config: dict[str, Any], study_dir: str | None) -> Iterator[Path | None]:
        """The state the trial goes on from, its reporter's state read from it: Tune's checkpoint of
        a restarted trial; or, for a replicate that is the search's best trial (same config, same
        seed), that trial's final state, continued -- nothing left to train -- and tested; or None."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as state_dir:
                self._read(Path(state_dir))
                yield Path(state_dir)
        elif config.get("reused_checkpoint"):
            reused = Path(study_dir or ".") / config["reused_checkpoint"]
            self._read(reused)
            self.state["step"] = 0  # a trial of its own: its reports count from its first
            yield reused
        else:
            yield None

    def _read(self, directory: Path) -> None:
        state = json.loads((directory / TRIAL_STATE).read_text())
        if "step" not in state:  # a checkpoint of an earlier tagtune, which reported every epoch
            state["step"] = int((state.get("last") or {}).get("epoch", 0))
        self.state.update(state)

    def finish(self, config: dict[str, Any], evaluation: Callable[[], dict[str, float]]) -> None:
        """The last report: a replicate's test metrics, or the end of a fit that stopped on its own
        (carrying the epochs held till then)."""
        last = {**(self.state["last"] or {}), STEP: self.state["step"] + 1}
        if config.get("phase") == "replicate":
            self.report({**last, **evaluation(), "complete": True})
        elif not last.get("complete", False):
            # The fit loop stopped on its own (patience): say so, or the searcher
            # would take the trial for one the scheduler cut short.
            self.report({**last, "complete": True})


def replayed(ended: dict[str, dict] | None) -> bool:
    """A trial that ended between the snapshot a resume started from and the interruption (the
    study's journal has its end): Tune and the searcher hear its last result again, nothing is
    retrained or logged twice. True where this trial is one."""
    trial_id = tune.get_context().get_trial_id() or ""
    if ended and trial_id in ended:
        tune.report({**ended[trial_id], REPLAYED: True})
        return True
    return False


def train_trial(config: dict[str, Any], dataset: Dataset, teacher_cache: str | None = None,
                study_dir: str | None = None, ended: dict[str, dict] | None = None,
                report_at: tuple[float, ...] | None = None) -> None:
    from tagtune.study.fit.teachers import TeacherCache
    from tagtune.study.fit.train import evaluate_fit, fit

    if replayed(ended):
        return
    trial_id = tune.get_context().get_trial_id() or ""
    cfg = train_config(config)
    reporter = Reporter(config, report_at)

    def on_epoch(logs: dict, save) -> None:
        reporter.epoch(reporter.metrics(logs), save if reporter.due(int(logs["epoch"])) else None)

    with reporter.resumed(config, study_dir) as state_dir:
        teacher = None
        if state_dir is None and shares_teacher(cfg.method) and teacher_cache:
            teacher = TeacherCache(teacher_cache).get(dataset, cfg, owner=trial_id)
        result = fit(dataset, cfg, on_epoch=on_epoch, resume=state_dir, le_teacher=teacher)
    reporter.finish(config, lambda: evaluate_fit(result, dataset))
