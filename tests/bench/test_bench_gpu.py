"""The GPU bench stays runnable: its ``--cpu-only --quick`` mode runs every step (the GPU's code
path on the CPU, K processes sharing a device, the projection table) without Ray, Optuna,
MLflow, pandas or YAML importable, as on a bare GPU node with only torch, numpy and h5py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.long
def test_bench_gpu_cpu_only_quick_runs_with_torch_numpy_h5py_alone(tmp_path, gpu_node_env):
    env = gpu_node_env
    r = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--cpu-only", "--quick"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for method in ("b1", "le", "mt"):
        row = next(line for line in out.splitlines() if line.startswith(method + " "))
        assert all(float(x) > 0 for x in row.split()[1:3]), row
    assert "== precision fp32" in out and "== precision bf16" in out  # both precisions, each step
    rates = [line.split() for line in out.splitlines() if line[:1].isdigit() and len(line.split()) == 3]
    assert [int(r[0]) for r in rates] == [1, 2, 1, 2] and all(float(r[1]) > 0 for r in rates)
    assert "1 cpu, K = 2" in out and "CPU cores, 1 a trial" in out  # the projection table
    assert out.rstrip().endswith("imported Ray/Optuna/MLflow: none")
