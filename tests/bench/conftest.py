"""What the bench tests share: a bench run with ``--quick`` and its figures; a child process's
environment as on a bare GPU node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Installed here, absent on a bare GPU node (torch, numpy, h5py only): the benches must not need them.
ABSENT_ON_A_GPU_NODE = ("ray", "optuna", "mlflow", "pandas", "yaml", "sklearn", "scipy")


BENCH = Path(__file__).resolve().parents[2] / "bench"


def quick_figures(script: str, tmp_path: Path, timeout: float) -> tuple[dict, str]:
    """Run ``bench/<script> --quick --out`` in ``tmp_path``; it must succeed; its figures and what
    it printed."""
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


@pytest.fixture
def gpu_node_env(tmp_path) -> dict[str, str]:
    """An environment whose PYTHONPATH shadows those packages (importing one fails); ``tmp_path``
    holds the shadows."""
    for name in ABSENT_ON_A_GPU_NODE:
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}
