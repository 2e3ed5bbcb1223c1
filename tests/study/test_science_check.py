"""bench/science_check.py in its --quick mode (seconds), so that the science re-run cannot rot."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import bench_module


@pytest.fixture(scope="module")
def science():
    return bench_module("science_check")


def test_setups_resolve_to_their_configs_and_shared_runs_are_one(science):
    before = science.config("openmic-like", "before", "mt", 0.4, 0, 40)
    paper = science.config("openmic-like", "paper", "mt", 0.4, 0, 40)
    default = science.config("openmic-like", "default", "b1", 0.4, 0, 40)
    assert (before["model"]["arch"], before["ema_warmup"], before["lr"]) == ("residual", False, 1e-3)
    assert (paper["model"]["arch"], paper["ema_warmup"], paper["mt_select"]) == ("paper", True, "student")
    assert paper["epochs"] == 40 and paper["lr_decay_epochs"] == [30, 60, 90]
    assert default["lr"] == 5e-4  # the paper's OpenMIC B1 lr
    # B0/B1/LE do not read MT's settings: a run the setups share is one config.
    for method in ("b0", "b1", "le"):
        a, b = (science.config("sonyc-like", s, method, 0.8, 1, 40) for s in ("before", "default"))
        assert a == b
    assert science.config("sonyc-like", "before", "mt", 0.8, 1, 40) != \
        science.config("sonyc-like", "default", "mt", 0.8, 1, 40)


def test_quick_mode_runs_every_row_and_writes_the_table(science, tmp_path):
    report = science.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "science_check_quick.json").read_text())
    assert saved["table"] == report["table"]
    rows = report["runs"]
    assert len(rows) == 2 * 3 * 4  # datasets x setups x methods (1 seed, 40% removed)
    assert {(r["dataset"], r["setup"], r["method"]) for r in rows} == {
        (d, s, m) for d in science.DATASETS for s in science.SETUPS for m in science.METHODS}
    assert all(math.isfinite(s["mean"]) and s["n"] == 1 for s in report["summary"])
    lines = [x for x in report["table"].splitlines() if x.startswith("| ")]
    assert len(lines) == 1 + 2 * 3  # header, then dataset x setup (one proportion)
    # Runs shared by construction have one result: equal metrics, equal seconds.
    b1 = {r["setup"]: r for r in rows if r["dataset"] == "sonyc-like" and r["method"] == "b1"}
    assert b1["before"]["seconds"] == b1["default"]["seconds"]


def test_setups_flag_runs_only_those_setups_and_refuses_others(science, tmp_path, capsys):
    report = science.main(["--quick", "--setups", "default", "--datasets", "sonyc-like",
                           "--methods", "b1,wan", "--out", str(tmp_path)])
    assert {(r["setup"], r["method"]) for r in report["runs"]} == {("default", "b1"), ("default", "wan")}
    assert (tmp_path / "science_check_quick_default.json").is_file()  # not the full run's file
    with pytest.raises(SystemExit) as e:
        science.main(["--quick", "--setups", "default,after", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--setups: unknown after" in capsys.readouterr().err
