"""The precision bench stays runnable: one cell of its ``--quick`` mode, in fresh processes, ends
with the speed-up line (figures only in bench/, never asserted here)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_precision  # noqa: E402


@pytest.mark.long
def test_quick_cell_times_both_precisions_and_prints_the_speed_up_last(capsys):
    result = bench_precision.main(["--quick", "--methods", "b1", "--threads", "1"])
    assert sorted(r["precision"] for r in result["runs"]) == ["bf16", "fp32"]
    assert all(r["wall"] > 0 and r["cpu"] > 0 and r["threads"] == 1 for r in result["runs"])
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert re.fullmatch(r"bf16 vs fp32 epoch speed-up: \d+\.\d\dx", last)
    assert abs(float(last.split()[-1].rstrip("x")) - result["speedup"]) <= 0.005
