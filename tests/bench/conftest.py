"""What the bench tests share: a child process's environment as on a bare GPU node."""

from __future__ import annotations

import os

import pytest

# Installed here, absent on a bare GPU node (torch, numpy, h5py only): the benches must not need them.
ABSENT_ON_A_GPU_NODE = ("ray", "optuna", "mlflow", "pandas", "yaml", "sklearn", "scipy")


@pytest.fixture
def gpu_node_env(tmp_path) -> dict[str, str]:
    """An environment whose PYTHONPATH shadows those packages (importing one fails); ``tmp_path``
    holds the shadows."""
    for name in ABSENT_ON_A_GPU_NODE:
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}
