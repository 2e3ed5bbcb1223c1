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
from tagtune.search_spaces import DEFAULT_RANGES_FILE, SPACES, Ranges, default_ranges_yaml, load_ranges
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
    assert METHOD_PARAMS == {m: tuple(f.name for f in fields(registry.params_class(m))) for m in METHODS}


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
    # default.yaml is generated from the declarations (edit a method module, not the file)
    assert DEFAULT_RANGES_FILE.read_text() == default_ranges_yaml()
    assert load_ranges(DEFAULT_RANGES_FILE) == Ranges()


def test_each_methods_params_are_its_declared_parameters():
    seen = set()
    for m in METHODS:
        cls = registry.params_class(m)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            p = PARAMS[f.name]
            assert f.metadata["param"] is p and f.default == p.default, (m, f.name)
            assert hints[f.name] == (p.kind | None if p.optional else p.kind), (m, f.name)
            seen.add(f.name)
        # a run's config holds its method's parameters, and no other method's
        assert isinstance(TrainConfig(method=m).params, cls)
    assert seen == set(PARAMS)
    assert not {f.name for f in fields(TrainConfig)} & set(PARAMS)  # none is a field of TrainConfig


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
    assert mt.networks("s", "t", TrainConfig(method="mt")) == ("t", "s")
    assert mt.networks("s", "t", TrainConfig(method="mt", mt_select="student")) == ("s", "t")
    assert registry.stages("le") == registry.stages("lemt") == ("teacher", "student")
    assert [m for m in METHODS if registry.shares_teacher(m)] == ["le"]


# Code, not prose: a quoted method name, a method module imported or used, a branch on the
# method or on a stage name.
_NAMED = re.compile(r"""["'](%s)["']|\bmethods\.(%s)\b|\bimport\b.*\b(%s)\b|"""
                    r"""\bmethod\s*(==|!=|\bin\b)|["'](teacher|student)["']"""
                    % (("|".join(METHODS),) * 3))


@pytest.mark.parametrize("path", ["tagtune/study/fit/train.py", "tagtune/launch/trainable.py",
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


NEW_METHOD = '''"""Zero: a method made up for a test, with a parameter no other method has."""
from dataclasses import dataclass

from tagtune.study.methods import ALL, b0
from tagtune.study.methods.declare import Bounds, Param, Search

NAME = "zero"
LABEL = "Zero"
SUMMARY = "B0 again, under another name"
SOURCE = "this test"
ORDER = 99
OBSERVATIONS = ALL
ZERO_WIDTH = Param("zero_width", float, 0.25, "how wide nothing is", Bounds(0, 1), search=Search(0.1, 0.9))


@dataclass(frozen=True)
class Params:
    zero_width: float = ZERO_WIDTH.field()


SEARCHED = (ZERO_WIDTH,)
step = b0.step
'''

CHECK = """
import sys
from typer.main import get_command
from tagtune.launch.cli import app
from tagtune.launch.cli_train import resolve_config
from tagtune.launch.tracking import run_params
from tagtune.search_spaces import DEFAULT_RANGES_FILE, SPACES, Ranges, default_ranges_yaml, paper_point
from tagtune.study.config import METHOD_PARAMS, METHODS, ConfigError, TrainConfig, from_dict, to_dict
from tagtune.study.methods.registry import markdown_table
assert METHODS[-1] == "zero" and METHOD_PARAMS["zero"] == ("zero_width",)
# the config: its parameters, flat in YAML and back, checked by the declared range
cfg = TrainConfig(method="zero", zero_width=0.5)
assert cfg.params.zero_width == 0.5 and to_dict(cfg)["zero_width"] == 0.5
assert from_dict(TrainConfig, to_dict(cfg)) == cfg and "zero_width" not in to_dict(TrainConfig(method="b0"))
try:
    TrainConfig(method="zero", zero_width=2.0)
    sys.exit("a zero_width out of its range was taken")
except ConfigError as e:
    assert str(e) == "config: zero_width: must be in [0, 1], got 2.0", e
# the CLI: its flag, help and value
train = get_command(app).commands["train"]
options = {p.name: p for p in train.params}
assert "zero" in options["method"].help and "--zero-width" in options["zero_width"].opts
assert "how wide nothing is" in options["zero_width"].help
assert resolve_config(None, None, method="zero", zero_width=0.75).params.zero_width == 0.75
# the search: its space, its range (and the ranges file generated from the declarations), its point
assert "zero" in SPACES and paper_point("zero", "openmic") == {"lr": 1e-3, "zero_width": 0.25}
assert Ranges().zero_width == (0.1, 0.9) and "  zero_width: [0.1, 0.9]" in default_ranges_yaml()
# MLflow's params of a trial: its own parameter, by name
params = run_params({**to_dict(cfg), "cell": "zero@0.00", "phase": "search"})
assert params["zero_width"] == 0.5 and "gamma" not in params
# the README's table
assert "| `zero` | B0 again, under another name | lr, zero_width | this test |" in markdown_table()
from tagtune.analysis.figures import COLORS, HPARAM_PANELS_BEYOND
from tagtune.analysis.stats import method_name
assert "zero" in COLORS and method_name("zero") == "Zero"
assert any(p[:2] == ("zero", "zero_width") for p in HPARAM_PANELS_BEYOND)
print("ok")
"""


def test_adding_a_method_with_a_new_parameter_is_one_new_module(tmp_path):
    copy = tmp_path / "tagtune"
    shutil.copytree(ROOT / "tagtune", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "study/methods/zero.py").write_text(NEW_METHOD)
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_config_from_before_holds_every_methods_parameters_and_still_loads():
    # Until a run's config held its method's parameters only, every config (YAML, Tune's params.json,
    # a checkpoint, an export) carried every method's, flat: such a config loads, its own kept.
    from tagtune.study.config import from_dict, to_dict

    before = {**to_dict(TrainConfig(method="b0")), **{n: p.default for n, p in PARAMS.items()}, "gamma": 30.0}
    le = from_dict(TrainConfig, {**before, "method": "le"})
    assert (le.params.gamma, le.params.le_teacher_lr) == (30.0, None)
    assert set(to_dict(le)) == set(to_dict(TrainConfig(method="b0"))) | {"gamma", "le_teacher_lr"}
    assert from_dict(TrainConfig, before).params == registry.NoParams()
    with pytest.raises(ConfigError, match="config: alpha: must be in"):  # checked, whatever the method
        from_dict(TrainConfig, {**before, "alpha": 1.5})
    with pytest.raises(ConfigError, match="config: gamma_typo: unknown key"):
        from_dict(TrainConfig, {**before, "gamma_typo": 1.0})


BROKEN = {  # a method module's mistake, and the one line that names it
    "Params = dict\n": "Params: must be a frozen dataclass",
    "begin_stage = lambda fs, previous: None\n":
        "begin_stage: must take 4 argument(s), as Hooks.begin_stage says",
    "SEARCHED = (ZERO_WIDTH,)\n": "SEARCHED: zero_width not in its Params",
}


@pytest.mark.parametrize("mistake", sorted(BROKEN))
def test_a_broken_method_module_is_one_line_naming_it_on_import(tmp_path, mistake):
    copy = tmp_path / "tagtune"
    shutil.copytree(ROOT / "tagtune", copy, ignore=shutil.ignore_patterns("__pycache__"))
    params = "@dataclass(frozen=True)\nclass Params:\n    zero_width: float = ZERO_WIDTH.field()\n"
    module = NEW_METHOD.replace(params, "") if mistake.startswith("SEARCHED") else NEW_METHOD
    (copy / "study/methods/zero.py").write_text(module + mistake)
    done = subprocess.run([sys.executable, "-O", "-c", "import tagtune.study.config"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode != 0  # under -O too: not an assert
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("tagtune.study.methods.registry.MethodDeclarationError: "
                    f"tagtune/study/methods/zero.py: {BROKEN[mistake]}"), done.stderr[-2000:]
