"""The fused-trials bench stays runnable: its ``--cpu-only --quick`` mode runs every step (stacks
of N, separate trial processes on both paths, MT fused, the projection) without Ray, Optuna,
MLflow, pandas or YAML importable, as on a bare GPU node with only torch, numpy and h5py, and
writes its figures as JSON."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.long
def test_bench_fused_cpu_only_quick_writes_every_figure_with_torch_numpy_h5py_alone(tmp_path, gpu_node_env):
    env = gpu_node_env
    out = tmp_path / "tmp.json"
    cmd = [sys.executable, str(BENCH / "bench_fused.py"), "--cpu-only", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert sorted(fig["b1"], key=int) == ["1", "4"]  # --quick's N, none skipped
    for n, row in fig["b1"].items():
        for key in ("fused", "separate", "separate_generic"):
            assert _positive(row[key]), (n, key, row)
        assert row["processes"] == min(int(n), fig["cores"])  # at most one process per core
    assert fig["mt"]["n"] == 4 and _positive(fig["mt"]["fused"])
    assert _positive(fig["projection"]["fused_min"]) and _positive(fig["projection"]["separate_min"])
    lines = r.stdout.rstrip().splitlines()
    assert "imported Ray/Optuna/MLflow/tagtune.launch: none" in lines[-2]
    last = re.fullmatch(r"paper-sized study projected: fused (\d+) min vs separate (\d+) min on (.+)",
                        lines[-1])
    assert last, lines[-1]
    projected = fig["projection"]
    assert [int(last[1]), int(last[2])] == [round(projected["fused_min"]), round(projected["separate_min"])]
    assert last[3] == fig["device"]
