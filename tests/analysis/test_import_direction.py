"""Data flows one way: ``analysis`` reads what a study wrote without importing ``launch``; the
CLI's command modules import none of each other, nor ``tagtune.launch.cli`` (no circle)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import tagtune.analysis, tagtune.analysis.pipeline, tagtune.analysis.export, tagtune.analysis.table
launch = sorted(m for m in sys.modules if m.startswith("tagtune.launch"))
assert not launch, f"analysis imported {launch}"
for name in ("cli_study", "cli_analysis", "cli_data", "cli_train", "cli_ui"):
    __import__(f"tagtune.launch.{name}")  # each on its own, first: a circle would fail here
    others = [m for m in sys.modules if m.startswith("tagtune.launch.cli") and m.split(".")[-1]
              not in ("cli_common", "cli_study", "cli_analysis", "cli_data", "cli_train", "cli_ui")]
    assert not others, f"{name} imported {others}"
import tagtune.launch.cli
print("ok")
"""


def test_analysis_imports_nothing_of_launch_and_cli_modules_no_circle():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_no_analysis_module_imports_launch_even_inside_a_function():
    import ast
    from pathlib import Path

    import tagtune.analysis

    for path in Path(tagtune.analysis.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n.startswith("tagtune.launch") for n in names), (path.name, node.lineno)


NO_RAY = """
import sys
import tagtune.analysis.pipeline
assert "ray" not in sys.modules, "import tagtune.analysis.pipeline loaded Ray"
from typer.testing import CliRunner
from tagtune.launch.cli import app
r = CliRunner().invoke(app, ["analyze", sys.argv[1], "--out", sys.argv[2], "--no-mlflow"])
assert r.exit_code == 0, r.output
assert "ray" not in sys.modules, "tagtune analyze loaded Ray"
assert "torch" not in sys.modules, "tagtune analyze loaded torch"
print("ok")
"""


def test_analysis_and_tagtune_analyze_load_no_ray(tiny_study, tmp_path):
    # Ray takes seconds to import and is not needed to read a study's files: a laptop that
    # analyses a cluster's study need not have it working. (Out of the study and without
    # MLflow: the session's study stays as the other tests expect it.)
    _, result = tiny_study
    done = subprocess.run([sys.executable, "-c", NO_RAY, str(result.study_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


NO_TORCH = """
import sys
import tagtune.study.folder, tagtune.study.config, tagtune.study.methods.registry
import tagtune.search_spaces, tagtune.analysis.pipeline
from tagtune.study.config import METHODS, TrainConfig
from tagtune.study.methods.registry import markdown_table
for method in METHODS:  # the methods' declarations: their parameters' checks, the README's table
    TrainConfig(method=method)
markdown_table()
assert "torch" not in sys.modules, "the study folder, the config or the analysis loaded torch"
from typer.testing import CliRunner
from tagtune.launch.cli import app
for args in ([], ["train"], ["study"], ["analyze"]):
    r = CliRunner().invoke(app, [*args, "--help"])
    assert r.exit_code == 0, r.output
assert "torch" not in sys.modules, "tagtune --help loaded torch"
print("ok")
"""


def test_the_study_folder_the_analysis_and_tagtune_help_load_no_torch():
    # torch costs ~2 s a process: `tagtune --help` and a laptop's analysis need none of it. The
    # method modules import it on first use (tagtune.study.lazy), so their declarations are free.
    done = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
