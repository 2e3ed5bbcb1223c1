"""The terminal during a study: the live display's counts, best losses and time left; the
libraries' log lines in study.log, not on the terminal; --quiet; --epochs 2 alone."""

from __future__ import annotations

import logging
import re

from rich.console import Console
from typer.testing import CliRunner

from tagtune.launch import display
from tagtune.launch.cli import app
from tagtune.launch.display import LOG_FILE, StudyDisplay, library_logs
from tagtune.study import data

# What Ray Tune, Ray and Optuna print on their own; none of it may reach the terminal.
NOISE = ("Configuration for experiment", "TensorBoard", "A new study created", "snapshotting",
         "Started a local Ray", "View detailed results", "INFO", "WARNING")


def test_display_counts_trials_and_keeps_each_cells_best():
    console = Console(record=True, width=100, force_terminal=False)
    d = StudyDisplay(("b1", "mt"), (0.0, 0.4), console=console)
    d.start_phase("search", 4)
    assert display._current is d  # what Tune's callback forwards to
    d.started("t1", "b1@0.00")
    d.result("t1", "b1@0.00", {"val/best_loss": 0.7})
    d.result("t1", "b1@0.00", {"val/best_loss": 0.5})
    d.result("t1", "b1@0.00", {"val/best_loss": float("inf")})  # LE's teacher stage: no score
    d.ended_trial("t1", "b1@0.00")
    d.started("t2", "mt@0.40")
    d.result("t2", "mt@0.40", {"val/best_loss": 0.61})
    assert d.eta() is not None and d.eta() > 0
    console.print(d.render())
    text = console.export_text()
    assert "1/4 done  1 running  2 pending" in text
    b1 = next(line for line in text.splitlines() if line.startswith("B1"))
    mt = next(line for line in text.splitlines() if line.startswith("MT"))
    assert re.search(r"0\.5000 \(1 done\)\s+— \(0 done\)$", b1), b1
    assert re.search(r"— \(0 done\)\s+0\.6100 \(0 done\)$", mt), mt
    d.ended_trial("t2", "mt@0.40", failed=True)
    d.ended_trial("t2", "mt@0.40", failed=True)  # told twice: counted once
    assert len(d.ended) == 2 and d.failed == 1
    d.stop()
    assert display._current is None


def test_library_lines_go_to_the_log_file_errors_to_stderr_in_one_line(tmp_path, capsys):
    before = list(logging.getLogger("optuna").handlers)
    with library_logs(tmp_path):
        logging.getLogger("optuna").info("A new study created in memory")
        logging.getLogger("ray.tune").warning("Experiment state snapshotting has been triggered")
        logging.getLogger("ray.tune").error("Trial failed\nTraceback (most recent call last): ...")
    err = capsys.readouterr().err
    assert err.strip() == f"error: Trial failed (more in {tmp_path / LOG_FILE})"
    log = (tmp_path / LOG_FILE).read_text()
    assert "A new study created" in log and "snapshotting" in log and "Traceback" in log
    assert logging.getLogger("optuna").handlers == before  # restored to what Optuna had
    logging.getLogger("ray.tune").warning("after the study")
    assert "after the study" not in (tmp_path / LOG_FILE).read_text()


def test_study_terminal_shows_the_display_not_library_lines(tmp_path, ray_session, tiny_dataset, capfd):
    path = data.save(tiny_dataset, tmp_path / "tiny.h5")
    common = ["study", "--data", str(path), "--methods", "b1", "--missing", "0", "--trials", "1",
              "--replicates", "1", "--storage", str(tmp_path)]
    # --epochs 2 with the default grace period (5): taken as min(5, epochs).
    shown = CliRunner().invoke(app, [*common, "--epochs", "2", "--name", "shown"])
    out = shown.output + "".join(capfd.readouterr())
    assert shown.exit_code == 0, out[-3000:]
    assert "search    1/1 done" in out and "replicate 1/1 done" in out
    # Before it started, one line said what it would run and at most how long.
    assert out.lstrip().startswith("plan: 1 cell (1 method x 1 proportion) x 1 trial x up to 2 "
                                   "epochs, then 1 replicate per cell and of its paper point; "
                                   "at most ~"), out[:300]
    assert not [n for n in NOISE if n in out], out
    log = (tmp_path / "shown" / LOG_FILE).read_text()
    assert "A new study created" in log and "Configuration for experiment" in log

    quiet = CliRunner().invoke(app, [*common[:-4], "--replicates", "0", "--storage", str(tmp_path),
                                     "--epochs", "1", "--name", "quiet", "--quiet"])
    out = quiet.output + "".join(capfd.readouterr())
    assert quiet.exit_code == 0, out[-3000:]
    labels = ("study:", "best:", "mlflow:", "log:", "open UI:", "analyze:")
    assert [line.split()[0] for line in out.splitlines()] == [label.split()[0] for label in labels], out


def test_help_says_what_tagtune_does_and_version_is_there():
    from importlib.metadata import version

    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "Compare methods for audio tagging with missing labels" in r.output
    assert "thin wrapper" not in r.output
    v = CliRunner().invoke(app, ["--version"])
    assert v.exit_code == 0 and v.output.strip() == f"tagtune {version('tagtune')}"
