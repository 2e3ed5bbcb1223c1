"""What the ``tagtune`` command says: every default in ``--help``, what a study will run before it
starts, a bad input naming the file or flag it came from (one test per case), LE's best epoch
within its stage, the report's untested p-values, an extended study's earlier rounds on the
display, and a ``--quiet`` study with LE printing nothing but its result lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from tagtune.launch.trainable import EARLIER
from tagtune.study.config import TrainConfig
from tagtune.study.data import save
from tests.conftest import invoke
from tests.launch.processes import cmdline, kill_session, session_pids

STUDY_DEFAULTS = {"--trials": "20", "--replicates": "5", "--epochs": "100",
                  "--missing": "0,0.1,0.2,0.4,0.8", "--name": "study", "--seed": "0",
                  "--cpus-per-trial": "1", "--preset": "openmic", "--checkpoint-every": "5",
                  "--max-failures": "3", "--storage": "studies"}


def _help_of(command: list[str]) -> dict[str, str]:
    """Each option's help text, from ``--help`` as a terminal of 400 columns shows it (one row an
    option), by flag."""
    from typer.testing import CliRunner

    from tagtune.launch.cli import app

    r = CliRunner().invoke(app, [*command, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    rows = {}
    for line in r.output.splitlines():
        m = re.match(r"^│\s+(--[a-z0-9-]+)(?:,?\s*--[a-z0-9-]+)?\s+(?:<[a-z]+>\s+)?(.*?)\s*│$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_study_help_shows_every_default():
    rows = _help_of(["study"])
    for flag, value in STUDY_DEFAULTS.items():
        assert f"(default {value})" in rows[flag], (flag, rows[flag])
    # What has no fixed value says what happens instead.
    for flag in ("--methods", "--address", "--mlflow-uri", "--grace-period", "--search-space"):
        assert "default" in rows[flag], (flag, rows[flag])
    assert "HEAD_IP:6379" in rows["--address"]  # as the README's cluster section says it


def test_train_help_shows_every_default():
    rows = _help_of(["train"])
    cfg = TrainConfig()
    for flag, value in {"--lr": f"{cfg.lr:g}", "--epochs": str(cfg.epochs),
                        "--batch-size": str(cfg.batch_size), "--seed": str(cfg.seed),
                        "--missing": f"{cfg.missing:g}", "--hidden": str(cfg.model.hidden)}.items():
        assert f"(default {value};" in rows[flag], (flag, rows[flag])
    assert "two stages" in rows["--epochs"]


def test_usage_names_the_study_dir_argument_in_capitals():
    for command in (["analyze"], ["ui"], ["study", "extend"], ["study", "resume"], ["mlflow", "sync"]):
        r = invoke(*command, "--help")
        usage = next(line for line in r.output.splitlines() if "Usage:" in line)
        assert "STUDY_DIR" in usage and "study_dir" not in usage, usage


def test_the_plan_says_cells_trials_epochs_replicates_and_a_time(tiny_dataset, tmp_path):
    from tagtune.launch.plan import plan_line, trial_epochs
    from tagtune.study.folder import StudySettings

    path = save(tiny_dataset, tmp_path / "tiny.h5")
    s = StudySettings(data=str(path), storage=str(tmp_path), methods=("b0", "le"),
                      missing=(0.0, 0.4, 0.8), trials=4, replicates=2, epochs=3, num_cpus=2)
    # LE trains two stages of `epochs`: (3 + 6) epochs a trial x 3 proportions; the replicates are
    # the best config's and the paper point's (paper_point, on by default).
    assert trial_epochs(s) == ((3 + 6) * 4 * 3, (3 + 6) * 2 * 2 * 3)
    assert trial_epochs(replace(s, paper_point=False))[1] == (3 + 6) * 2 * 3
    line = plan_line(s, tiny_dataset)
    assert line.startswith("plan: 6 cells (2 methods x 3 proportions) x 4 trials x up to 3 epochs, "
                           "then 2 replicates per cell and of its paper point; at most ~"), line
    assert line.endswith("on 2 trial slots (ASHA stops many trials early)"), line
    assert "\n" not in line
    on_a_cluster = plan_line(StudySettings(data=str(path), storage=str(tmp_path), address="auto"),
                             tiny_dataset)
    assert on_a_cluster.startswith("plan: 55 cells (11 methods x 5 proportions) x 20 trials x up "
                                   "to 100 epochs, then 5 replicates per cell and of its paper point "
                                   "(no time estimate")


# -- bad input names the file or the flag it came from: one test per case ---------------------


def _one_line_error(r, exit_code: int = 2) -> str:
    assert r.exit_code == exit_code, r.output
    line = r.output.strip()
    assert "\n" not in line and "Traceback" not in line, line
    return line


def test_an_unknown_key_in_a_train_yaml_names_the_file(data_file, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("method: b1\nlerning_rate: 0.1\n")
    line = _one_line_error(invoke("train", "--data", data_file, "--out", tmp_path / "o",
                                  "--config", cfg))
    assert line == f"error: {cfg}: lerning_rate: unknown key"


def test_a_wrong_type_in_a_train_yaml_names_the_file(data_file, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("method: b1\nmodel:\n  hidden: wide\n")
    line = _one_line_error(invoke("train", "--data", data_file, "--out", tmp_path / "o",
                                  "--config", cfg))
    assert line.startswith(f"error: {cfg}: model.hidden: expected an integer"), line


@pytest.mark.parametrize("command", ["train", "study"])
def test_a_bad_flag_value_names_the_flag(data_file, tmp_path, command):
    args = ["--method", "b1", "--out", tmp_path / "o"] if command == "train" else \
        ["--storage", tmp_path]
    line = _one_line_error(invoke(command, "--data", data_file, *args, "--missing", "-0.2"))
    assert line.startswith("error: command line: --missing: must be in [0, 1)"), line
    line = _one_line_error(invoke(command, "--data", data_file, *args, "--epochs", "0"))
    assert line == "error: command line: --epochs: must be >= 1, got 0"


def test_an_empty_study_yaml_names_the_file_and_the_missing_field(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("")
    line = _one_line_error(invoke("study", "--config", cfg))
    assert line.startswith(f"error: {cfg}: data: not given"), line


def test_a_bad_value_in_a_study_yaml_names_the_file_and_a_flag_wins(data_file, tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"data: {data_file}\ntrials: 0\n")
    line = _one_line_error(invoke("study", "--config", cfg, "--storage", tmp_path))
    assert line == f"error: {cfg}: trials: must be >= 1, got 0"
    line = _one_line_error(invoke("study", "--config", cfg, "--trials", "-1"))
    assert line == "error: command line: --trials: must be >= 1, got -1"


def test_a_y_of_the_wrong_width_is_named_as_y(tiny_dataset, tmp_path):
    import h5py

    path = save(tiny_dataset, tmp_path / "tiny.h5")
    with h5py.File(path, "a") as f:
        y = f["train/Y"][:]
        del f["train/Y"]
        f["train/Y"] = np.concatenate([y, y[:, :1]], axis=1)
    line = _one_line_error(invoke("train", "--data", path, "--out", tmp_path / "o", "--method", "b1"))
    assert line == f"error: {path}:/train: Y: expected 3 columns (one per class name), got shape (40, 4)"


# -- what a run says ----------------------------------------------------------------------


def test_le_best_epoch_is_counted_within_its_stage():
    from tagtune.launch.cli_train import best_epoch_text

    cfg = TrainConfig(method="le", epochs=3)
    assert best_epoch_text(cfg, 5) == ("best/epoch 2 of 3 in stage student (2 stages of 3 epochs: "
                                       "epoch 5 of 6)")
    assert best_epoch_text(TrainConfig(method="b1", epochs=3), 2) == "best/epoch 2 of 3"


def test_the_report_says_a_comparison_of_two_seeds_was_not_tested():
    from tagtune.analysis.report import _comparisons
    from tagtune.analysis.stats import MIN_VERDICT_PAIRS

    pairs = pd.DataFrame([
        {"method": "mt", "reference": "b1", "proportion": 0.4, "n": 2, "diff": 0.05, "ci_low": 0.01,
         "ci_high": 0.09, "p_boot": 0.0, "p_holm": np.nan, "p_wilcoxon": np.nan,
         "verdict": "too few seeds"},
        {"method": "le", "reference": "b1", "proportion": 0.4, "n": 5, "diff": 0.05, "ci_low": 0.01,
         "ci_high": 0.09, "p_boot": 0.0, "p_holm": 0.0, "p_wilcoxon": 0.0625, "verdict": "better"}])
    t = _comparisons(pairs)
    assert list(t["bootstrap p"]) == [f"not tested (n < {MIN_VERDICT_PAIRS})", "< 0.001"]
    assert list(t["Holm p"]) == ["—", "< 0.001"] and list(t["Wilcoxon p"]) == ["—", "0.062"]


def test_an_extended_study_shows_its_earlier_rounds_on_the_display(tmp_path):
    from tagtune.launch.display import StudyDisplay, earlier_work

    (tmp_path / "summary.json").write_text(json.dumps({
        "cells": {"b0@0.00": {"completed": 2, "stopped_early": 1, "optuna": {"best_value": 0.61}}},
        "replicates": [{"cell": "b0@0.00", "error": None}, {"cell": "b0@0.00", "error": None}]}))
    (tmp_path / "rounds.json").write_text(json.dumps([
        {"round": 1, "ended": "2026-01-01T00:00:00Z"}, {"round": 2, "started": "x", "ended": None}]))
    earlier = earlier_work(tmp_path)
    d = StudyDisplay(("b0", "b1"), (0.0,), console=Console(file=None, width=120, record=True),
                     earlier=earlier)
    d.start_phase("search", total=2)
    d.stop()
    text = Console(width=120, record=True)
    text.print(d.render())
    shown = text.export_text()
    assert re.search(r"B0\s+0\.6100 \(3 done\)", shown), shown  # not "— (0 done)": nothing lost
    assert re.search(r"B1\s+— \(0 done\)", shown), shown
    d.start_phase("replicate", total=2)
    d.stop()
    text.print(d.render())
    assert re.search(r"B0\s+2\n", text.export_text()), text.export_text()
    # A first round (no rounds.json) and a finished extension have no earlier work to add.
    (tmp_path / "rounds.json").write_text(json.dumps([{"round": 1, "ended": "a"},
                                                      {"round": 2, "ended": "b"}]))
    assert earlier_work(tmp_path) is None


@pytest.mark.timeout(600)
def test_a_quiet_study_with_le_prints_only_its_result_lines(tiny_dataset, tmp_path):
    """Its own process (stderr as a terminal would get it): LE training its own teacher, whose
    epochs report val/best_loss = inf ("not yet") -- no line on stderr, no NaN or inf anywhere a
    metric is reported as a number."""
    path = save(tiny_dataset, tmp_path / "tiny.h5")
    proc = subprocess.Popen([sys.executable, "-m", "tagtune", "study", "--data", str(path), "--methods",
                             "le", "--missing", "0.4", "--trials", "2", "--replicates", "1", "--epochs",
                             "2", "--grace-period", "1", "--no-share-le-teacher", "--storage",
                             str(tmp_path), "--name", "quiet", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        raise
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert r.returncode == 0, r.stderr[-3000:]
    # It leaves without Python's teardown (launch.ray_start.exit_process): what it printed and
    # logged is all there, and the Ray it started went with it (its agents too, which outlive a
    # driver that does not shut Ray down by a minute or more).
    assert "Configuration for experiment" in (tmp_path / "quiet" / "study.log").read_text()
    deadline = time.monotonic() + 30
    while (left := _alive(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    names = [cmdline(pid) for pid in left]
    kill_session(proc)
    assert not left, names
    err_lines = r.stderr.splitlines()
    assert len(err_lines) == 0, err_lines[:20]
    labels = ["study:", "best:", "mlflow:", "log:", "open", "analyze:"]
    assert [line.split()[0] for line in r.stdout.splitlines()] == labels, r.stdout
    # The teacher's epochs were reported (val/best_loss inf); no TensorBoard files (MLflow holds
    # every epoch; Tune's TensorBoard logger warned of that inf and saw only the epochs reported).
    rows = [json.loads(line) for f in (tmp_path / "quiet" / "search").glob("*/result.json")
            for line in f.read_text().splitlines()]
    results = [e for row in rows for e in [*row.get(EARLIER, []), row]]  # epochs carried, too
    assert any(x["stage"] == "teacher" for x in results)
    assert rows and not list((tmp_path / "quiet").rglob("events.out.tfevents.*"))


def _alive(sid: int) -> list[int]:
    """The live processes (not zombies) of a session."""
    def state(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "Z"
    return [pid for pid in session_pids(sid) if state(pid) != "Z"]
