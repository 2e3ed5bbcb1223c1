"""The terminal during a study: one live display, and the libraries' log lines in a file.

:class:`StudyDisplay` draws, per phase, the trials done / running / pending of the phase's
total, per cell the best validation loss so far (a methods x proportions grid), the elapsed
time and an estimate of what is left (rich ``Live``; in a log or a pipe, the final state of
each phase is printed once). Ray Tune calls :class:`DisplayCallback`, which forwards to the
display of this process: Tune pickles its callbacks with the experiment and unpickles them on
resume, so the callback holds no display of its own.

:func:`library_logs` sends Ray's, Tune's, Optuna's and MLflow's log lines (and Python
warnings) to ``STUDY_DIR/study.log`` instead of the terminal; their errors still reach the
terminal, one line each, saying where to read more.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tagtune.study.folder import LOG_FILE, SUMMARY, cell_id, read_rounds
from tagtune.study.objective import LEGACY, better, score_key

LIBRARIES = ("ray", "optuna", "mlflow", "alembic", "py.warnings", "filelock", "urllib3",
             "tensorboardX")
SCORE = "val/best_loss"  # objective val/loss's; a display follows its study's (self.score)

_current: StudyDisplay | None = None  # the display DisplayCallback forwards to


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Earlier:
    """What the earlier rounds of an extended study found, per cell: shown beside this round's
    work so that cells the extension does not touch do not look empty."""

    best: dict[str, float] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    replicates: dict[str, int] = field(default_factory=dict)


def earlier_work(study_dir: Path) -> Earlier | None:
    """The earlier rounds' results (summary.json, written when a round ends) while a later round
    runs; None in a study's first round."""
    rounds = read_rounds(study_dir)
    path = Path(study_dir) / SUMMARY
    if len(rounds) < 2 or rounds[-1].get("ended") or not path.is_file():
        return None
    summary = json.loads(path.read_text())
    out = Earlier()
    for cell, c in (summary.get("cells") or {}).items():
        value = (c.get("optuna") or {}).get("best_value")
        if isinstance(value, int | float) and math.isfinite(value):
            out.best[cell] = float(value)
        out.trials[cell] = int(c.get("completed", 0)) + int(c.get("stopped_early", 0))
    for r in summary.get("replicates") or []:
        if r.get("error") is None:
            out.replicates[r["cell"]] = out.replicates.get(r["cell"], 0) + 1
    return out


class StudyDisplay:
    """Live progress of one study (see the module docstring); ``console`` None = stdout;
    ``earlier``: an extended study's earlier rounds (:func:`earlier_work`)."""

    def __init__(self, methods: tuple[str, ...], missing: tuple[float, ...],
                 console: Console | None = None, objective: str = LEGACY,
                 earlier: Earlier | None = None):
        self.methods, self.missing = methods, missing
        self.objective, self.score = objective, score_key(objective)  # what "best" means
        self.earlier = earlier or Earlier()
        self.console = console or Console(file=sys.stdout)  # this stdout, not one redirected later
        self.phase, self.total, self.t0 = "", 0, time.monotonic()
        self.running: dict[str, str] = {}  # trial id -> cell
        self.ended: dict[str, str] = {}  # trial id -> cell (complete, stopped early or failed)
        self.failed = 0
        self.best: dict[str, float] = {}
        self._live: Live | None = None

    # -- what Tune tells -----------------------------------------------------------------

    def start_phase(self, phase: str, total: int, ended: dict[str, str] | None = None,
                    best: dict[str, float] | None = None) -> None:
        """A phase of ``total`` trials; ``ended``/``best``: what a resumed phase already has."""
        global _current
        self.stop()
        self.phase, self.total, self.t0 = phase, total, time.monotonic()
        self.running, self.ended, self.failed = {}, dict(ended or {}), 0
        self.best = dict(best or {}) if phase == "search" else self.best
        self._done_before = len(self.ended)
        self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=2,
                          redirect_stdout=False)
        self._live.start()
        _current = self

    def started(self, trial_id: str, cell: str) -> None:
        self.running[trial_id] = cell

    def result(self, trial_id: str, cell: str, result: dict) -> None:
        self.running.setdefault(trial_id, cell)
        value = result.get(self.score)
        if self.phase == "search" and isinstance(value, int | float) and math.isfinite(value):
            if cell not in self.best or better(value, self.best[cell], self.objective):
                self.best[cell] = value

    def ended_trial(self, trial_id: str, cell: str, failed: bool = False) -> None:
        self.running.pop(trial_id, None)
        if trial_id not in self.ended:
            self.ended[trial_id] = cell
            self.failed += failed

    def stop(self) -> None:
        global _current
        if self._live is not None:
            self._live.stop()  # leaves the final state on the terminal
            self._live = None
            if not self.console.is_terminal:  # printed once, without a line end
                self.console.line()
        if _current is self:
            _current = None

    # -- what it shows -------------------------------------------------------------------

    def eta(self) -> float | None:
        """Seconds left, from this run's pace (trials it ended per second); None before one."""
        done_now = len(self.ended) - self._done_before
        left = self.total - len(self.ended)
        if left <= 0:
            return 0.0
        if done_now <= 0:
            return None
        return (time.monotonic() - self.t0) / done_now * left

    def render(self) -> Group:
        done, running = len(self.ended), len(self.running)
        pending = max(self.total - done - running, 0)
        eta = self.eta()
        head = Text.assemble(
            (f"{self.phase:<10}", "bold"), f"{done}/{self.total} done  {running} running  "
            f"{pending} pending" + (f"  {self.failed} failed" if self.failed else ""),
            f"   elapsed {_clock(time.monotonic() - self.t0)}",
            f"   ~{_clock(eta)} left" if eta is not None else "   estimating time left")
        grid = Table(box=None, pad_edge=False, show_edge=False, header_style="dim")
        grid.add_column(f"best {self.objective}" if self.phase == "search" else
                        "re-rank runs done" if self.phase == "rerank" else "replicates done")
        for p in self.missing:
            grid.add_column(f"{100 * p:.0f}% missing", justify="right")
        per_cell: dict[str, int] = {}
        for cell in self.ended.values():
            per_cell[cell] = per_cell.get(cell, 0) + 1
        for m in self.methods:
            row = []
            for p in self.missing:
                cell = cell_id(m, p)
                n = per_cell.get(cell, 0)
                if self.phase == "search":
                    n += self.earlier.trials.get(cell, 0)
                    best = self.best.get(cell)
                    prior = self.earlier.best.get(cell)
                    if prior is not None and (best is None or better(prior, best, self.objective)):
                        best = prior
                    row.append(f"{'—' if best is None else f'{best:.4f}'} ({n} done)")
                elif self.phase == "rerank":
                    row.append(str(n))
                else:
                    row.append(str(n + self.earlier.replicates.get(cell, 0)))
            grid.add_row(m.upper(), *row)
        return Group(head, grid)


class DisplayCallback(Callback):
    """Ray Tune's events, forwarded to this process's :class:`StudyDisplay` (if any)."""

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if _current is not None:
            _current.started(trial.trial_id, trial.config.get("cell", "?"))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if _current is not None:
            _current.result(trial.trial_id, trial.config.get("cell", "?"), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if _current is not None:
            _current.ended_trial(trial.trial_id, trial.config.get("cell", "?"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if _current is not None:
            _current.ended_trial(trial.trial_id, trial.config.get("cell", "?"), failed=True)


class FiniteTBXLogger(TBXLoggerCallback):
    """Kept for the phases an earlier tagtune began (their tuner.pkl names it; a new phase has no
    TensorBoard logger: tagtune.launch.wiring.run_config). Tune's TensorBoard logger, given only
    the finite numbers of a result. ``val/best_loss`` is
    inf while LE trains its teacher (no candidate model yet: "not yet", not a loss); Tune's own
    logger skips NaN but hands inf to tensorboardX, which warned "NaN or Inf found in input
    tensor." on the terminal for every such epoch (hundreds of lines in a --quiet study)."""

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        # Numbers only: the epochs a report carries (trainable.EARLIER) are a list, which
        # tensorboardX cannot log (it warned once a report in study.log).
        finite = {k: v for k, v in result.items() if not isinstance(v, list | tuple)
                  and not (isinstance(v, float) and not math.isfinite(v))}
        super().log_trial_result(iteration, trial, finite)


class _OneLine(logging.Formatter):
    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().strip().splitlines() or [record.name]
        return f"error: {lines[0][:300]} (more in {self.path})"


class LibraryLogs:
    """The libraries' loggers pointed at the study's log file (see :func:`library_logs`)."""

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / LOG_FILE
        self.file = logging.FileHandler(self.path)
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.errors = logging.StreamHandler(sys.stderr)
        self.errors.setLevel(logging.ERROR)
        self.errors.setFormatter(_OneLine(self.path))
        self.saved: dict[str, tuple[list, bool, int]] = {}

    def apply(self) -> None:
        """Point the loggers here; again after ``ray.init``, which sets up Ray's own handler."""
        import mlflow  # noqa: F401 -- importing MLflow sets up its loggers: ours must come after

        for name in LIBRARIES:
            logger = logging.getLogger(name)
            if name not in self.saved:
                self.saved[name] = (list(logger.handlers), logger.propagate, logger.level)
            logger.handlers = [self.file, self.errors]
            logger.propagate = False
            logger.setLevel(logging.INFO)
        tagtune = logging.getLogger("tagtune")  # ours also reach the terminal (lastResort)
        if self.file not in tagtune.handlers:
            tagtune.addHandler(self.file)
        logging.captureWarnings(True)

    @contextmanager
    def stdout(self) -> Iterator[None]:
        """What the block prints goes to the log file: Ray Tune prints its experiment's header
        (and a TensorBoard hint) whatever its verbosity."""
        with open(self.path, "a") as f, redirect_stdout(f):
            yield

    def restore(self) -> None:
        for name, (handlers, propagate, level) in self.saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        logging.getLogger("tagtune").removeHandler(self.file)
        logging.captureWarnings(False)
        self.file.close()


@contextmanager
def library_logs(study_dir: Path, enabled: bool = True) -> Iterator[LibraryLogs | None]:
    """Ray's, Tune's, Optuna's and MLflow's log lines and Python warnings into
    ``STUDY_DIR/study.log`` while the block runs; errors also on stderr, one line each."""
    if not enabled:
        yield None
        return
    logs = LibraryLogs(study_dir)
    logs.apply()
    try:
        yield logs
    finally:
        logs.restore()


__all__ = ["LOG_FILE", "DisplayCallback", "Earlier", "FiniteTBXLogger", "LibraryLogs", "StudyDisplay",
           "earlier_work", "library_logs"]
