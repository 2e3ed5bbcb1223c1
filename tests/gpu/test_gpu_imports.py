"""The GPU tests need nothing a GPU node lacks: one of them, dry-run on the CPU, collects and passes in a
pytest with no plugins and with the project's other dependencies unimportable (a GPU node has only
torch, numpy, h5py, pandas, scipy, scikit-learn and pytest). Not marked gpu: it runs in ``make test``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The project's dependencies (and test plugins) that a GPU node does not have.
BLOCKED = ("ray", "optuna", "mlflow", "typer", "yaml", "hypothesis", "matplotlib", "rich", "click",
           "optuna_dashboard", "pytest_timeout", "playwright", "psycopg", "sqlalchemy")

# Run in the child: every finder on the meta path made blind to the blocked packages, so that
# importing one fails and importlib.util.find_spec says None (torch probes optional packages so), as
# where they are not installed; then pytest.
CHILD = f"""
import sys
BLOCKED = {BLOCKED!r}
assert not [m for m in sys.modules if m.partition(".")[0] in BLOCKED]

class Blind:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Blind(f) for f in sys.meta_path]
import importlib.util
assert importlib.util.find_spec("yaml") is None  # installed here: the block works
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_a_gpu_test_runs_without_what_a_gpu_node_lacks():
    # No plugin autoload: the node's pytest has none (no pytest-timeout, no hypothesis plugin).
    env = {**os.environ, "TAGTUNE_GPU_TESTS_ON": "cpu", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    args = ["-q", "-m", "gpu", "tests/gpu", "-k", "test_every_method_fits and b1", "-p", "no:cacheprovider"]
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "1 passed" in r.stdout, r.stdout[-3000:]
