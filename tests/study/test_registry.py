"""One registry of methods: every list of methods and of their parameters is derived from the
method modules' declarations, and the fit loop, the trainable and the search spaces name none."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import typer

import tagtune
from tagtune.launch.cli import app
from tagtune.search_spaces import DEFAULT_RANGES_FILE, SPACES, Ranges
from tagtune.study import config
from tagtune.study.config import ConfigError, TrainConfig
from tagtune.study.methods import registry
from tagtune.study.methods.registry import METHOD_PARAMS, METHODS, PARAMS, markdown_table

ROOT = Path(tagtune.__file__).parent.parent
README = ROOT / "README.md"
START, END = "<!-- methods:start -->", "<!-- methods:end -->"


def test_methods_are_the_modules_of_the_package():
    modules = {p.stem for p in (ROOT / "tagtune/study/methods").glob("*.py")} - {"__init__", *registry.SHARED}
    assert set(METHODS) == modules
    assert METHODS[:4] == ("b0", "b1", "le", "mt")  # the paper's four first
    assert config.METHODS == METHODS and config.METHOD_PARAMS == METHOD_PARAMS
    assert METHOD_PARAMS == {m: tuple(p.name for p in registry.get(m).PARAMS) for m in METHODS}


def test_the_cli_offers_every_method_and_a_flag_per_parameter():
    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params}
    assert f"One of {', '.join(METHODS)} " in options["method"].help
    assert set(PARAMS) <= set(options)
    for name, p in PARAMS.items():
        assert f"--{name.replace('_', '-')}" in options[name].opts
        assert p.help in options[name].help and ", ".join(registry.owners(name)) in options[name].help


def test_the_search_spaces_are_the_declared_ones():
    assert list(SPACES) == list(METHODS)
    searched = {p.search_name: p for m in METHODS for p in registry.searched(m)}
    assert [f.name for f in fields(Ranges)] == ["lr", *searched, "arch"]
    for name, p in searched.items():
        assert getattr(Ranges(), name) == (p.search.low, p.search.high)
        assert f"  {name}:" in DEFAULT_RANGES_FILE.read_text()


def test_trainconfig_fields_are_the_declared_parameters():
    by_name = {f.name: f for f in fields(TrainConfig)}
    for name, p in PARAMS.items():
        assert by_name[name].default == p.default, name
        assert typing.get_type_hints(TrainConfig)[name] == (p.kind | None if p.optional else p.kind), name


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_each_parameter_has_one_check_the_declared_one(name):
    p = PARAMS[name]
    bad = "neither" if p.choices else -1e9 if p.bounds and p.bounds.low is not None else 1e9
    if p.kind is bool:
        return  # any bool is valid; from_dict refuses the rest
    if p.bounds is not None and p.bounds.low is None and p.bounds.high is None:
        bad = float("nan")
    with pytest.raises(ConfigError, match=f"config: {name}: ") as e:
        TrainConfig(**{name: bad})
    assert str(e.value).split(": ", 2)[-1] == p.problem(bad)


def test_hook_defaults_and_mt_hooks():
    b1, mt = registry.hooks("b1"), registry.hooks("mt")
    assert b1.networks("s", None, TrainConfig()) == ("s", None) and b1.make_teacher is None
    assert mt.networks("s", "t", TrainConfig()) == ("t", "s")
    assert mt.networks("s", "t", TrainConfig(mt_select="student")) == ("s", "t")
    assert registry.stages("le") == registry.stages("lemt") == ("teacher", "student")
    assert [m for m in METHODS if registry.shares_teacher(m)] == ["le"]


# Code, not prose: a quoted method name, a method module imported or used, a branch on the
# method or on a stage name.
_NAMED = re.compile(r"""["'](%s)["']|\bmethods\.(%s)\b|\bimport\b.*\b(%s)\b|"""
                    r"""\bmethod\s*(==|!=|\bin\b)|["'](teacher|student)["']"""
                    % (("|".join(METHODS),) * 3))


@pytest.mark.parametrize("path", ["tagtune/study/train.py", "tagtune/study/trainable.py",
                                  "tagtune/search_spaces/spaces.py"])
def test_the_loop_the_trainable_and_the_spaces_name_no_method(path):
    code = [line for line in (ROOT / path).read_text().splitlines()
            if not line.lstrip().startswith("#")]
    named = [line for line in code if _NAMED.search(line.split("#")[0])]
    assert not named, named


def test_readme_has_the_generated_method_table():
    text = README.read_text()
    assert START in text and END in text
    between = text.split(START, 1)[1].split(END, 1)[0]
    assert between.strip("\n") == markdown_table().strip("\n")


NEW_METHOD = '''"""Zero: a method made up for a test."""
from tagtune.study.methods import ALL, b0
from tagtune.study.methods.hill import MARGIN

NAME = "zero"
LABEL = "Zero"
SUMMARY = "B0 again, under another name"
SOURCE = "this test"
ORDER = 99
OBSERVATIONS = ALL
PARAMS = (MARGIN,)
SEARCHED = (MARGIN,)
step = b0.step
'''

CHECK = """
from typer.main import get_command
from tagtune.launch.cli import app
from tagtune.search_spaces import SPACES, paper_point
from tagtune.study.config import METHOD_PARAMS, METHODS, TrainConfig
assert METHODS[-1] == "zero" and METHOD_PARAMS["zero"] == ("margin",)
assert "zero" in SPACES and paper_point("zero", "openmic") == {"lr": 1e-3, "margin": 1.0}
assert "zero" in {p.name: p for p in get_command(app).commands["train"].params}["method"].help
TrainConfig(method="zero")
from tagtune.analysis.figures import COLORS, HPARAM_PANELS_BEYOND
from tagtune.analysis.stats import method_name
assert "zero" in COLORS and method_name("zero") == "Zero"
assert ("zero", "margin", "Zero margin", False, None) in HPARAM_PANELS_BEYOND
print("ok")
"""


def test_adding_a_method_is_one_new_module(tmp_path):
    copy = tmp_path / "tagtune"
    shutil.copytree(ROOT / "tagtune", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "study/methods/zero.py").write_text(NEW_METHOD)
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
