"""Search spaces: parameters and ranges per method, the paper's point, YAML overrides."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.distributions import FloatDistribution

from tagtune.search_spaces import (
    DEFAULT_RANGES_FILE,
    SPACES,
    Ranges,
    load_ranges,
    paper_point,
)
from tagtune.study.config import ConfigError, TrainConfig

RANGES = Ranges(lr=(1e-5, 1e-1), gamma=(5, 60), one_minus_alpha=(1e-3, 0.5), beta=(1, 4))

EXPECTED = {  # method -> (Optuna parameter, distribution) and the config keys returned
    "b0": ({"lr": FloatDistribution(1e-5, 1e-1, log=True)}, {"lr"}),
    "b1": ({"lr": FloatDistribution(1e-5, 1e-1, log=True)}, {"lr"}),
    "le": ({"lr": FloatDistribution(1e-5, 1e-1, log=True), "gamma": FloatDistribution(5, 60)},
           {"lr", "gamma"}),
    "mt": ({"lr": FloatDistribution(1e-5, 1e-1, log=True),
            "one_minus_alpha": FloatDistribution(1e-3, 0.5, log=True),
            "beta": FloatDistribution(1, 4)}, {"lr", "alpha", "beta"}),
}


def _ask(method: str, ranges: Ranges, point: dict | None = None, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    if point is not None:
        study.enqueue_trial(point)
    trial = study.ask()
    return trial, SPACES[method](trial, ranges)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_each_method_searches_its_parameters_in_the_given_ranges(method):
    distributions, config_keys = EXPECTED[method]
    for seed in range(20):
        trial, config = _ask(method, RANGES, seed=seed)
        assert trial.distributions == distributions
        assert set(config) == config_keys
        for name, value in trial.params.items():
            assert distributions[name].low <= value <= distributions[name].high
        # Every returned value is a valid TrainConfig field value.
        TrainConfig(method=method, **config)


def test_mt_returns_alpha_as_one_minus_the_searched_value():
    trial, config = _ask("mt", RANGES, seed=3)
    assert config["alpha"] == 1.0 - trial.params["one_minus_alpha"]
    assert "one_minus_alpha" not in config


class _RecordingTrial:
    """Offers only suggest_float and records the calls: any other use fails the test."""

    def __init__(self):
        self.calls = []

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.calls.append((name, low, high, log))
        return low

    def __getattr__(self, name):
        raise AssertionError(f"a search space touched trial.{name}")


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_spaces_are_computation_free(method):
    trial = _RecordingTrial()
    config = SPACES[method](trial, RANGES)
    distributions, _ = EXPECTED[method]
    assert [c[0] for c in trial.calls] == list(distributions)
    for name, low, high, log in trial.calls:
        d = distributions[name]
        assert (low, high, log) == (d.low, d.high, d.log)
    assert config["lr"] == RANGES.lr[0]


@pytest.mark.parametrize(("method", "preset", "config"), [
    # the lr of the paper's run script for the method and dataset (not 1e-3 everywhere)
    ("b0", "openmic", {"lr": 5e-4}),
    ("b1", "openmic", {"lr": 5e-4}),
    ("b0", "sonyc", {"lr": 1e-3}),
    ("b1", "sonyc", {"lr": 1e-3}),
    ("le", "openmic", {"lr": 1e-3, "gamma": 10.0}),
    ("le", "sonyc", {"lr": 1e-3, "gamma": 95.0}),
    ("mt", "openmic", {"lr": 1e-3, "alpha": 0.999, "beta": 3.0}),
    ("mt", "sonyc", {"lr": 1e-3, "alpha": 0.99, "beta": 3.0}),
])
def test_the_paper_point_enqueued_first_gives_the_paper_settings(method, preset, config):
    point = paper_point(method, preset)
    _, got = _ask(method, Ranges(), point=point)
    assert got == config  # exact: 1 - (1 - 0.999) is 0.999 again


def test_a_paper_point_outside_the_ranges_is_clipped_into_them():
    ranges = Ranges(lr=(1e-2, 1e-1), gamma=(20, 50), one_minus_alpha=(0.05, 0.1), beta=(0, 1))
    assert paper_point("le", "openmic", ranges) == {"lr": 1e-2, "gamma": 20.0}
    assert paper_point("le", "sonyc", ranges) == {"lr": 1e-2, "gamma": 50.0}
    assert paper_point("mt", "openmic", ranges) == {"lr": 1e-2, "one_minus_alpha": 0.05,
                                                    "beta": 1.0}
    # Clipped values lie inside the distributions: Optuna takes them without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, config = _ask("mt", ranges, point=paper_point("mt", "openmic", ranges))
    assert config == {"lr": 1e-2, "alpha": 0.95, "beta": 1.0}


def test_unknown_method_or_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="method"):
        paper_point("b2", "openmic")
    with pytest.raises(ConfigError, match="preset"):
        paper_point("b0", "audioset")


def test_default_yaml_documents_the_defaults(tmp_path):
    assert load_ranges(DEFAULT_RANGES_FILE) == Ranges()
    text = DEFAULT_RANGES_FILE.read_text()
    for name in ("lr", "gamma", "one_minus_alpha", "beta", "arch"):
        assert f"  {name}:" in text


def test_yaml_overrides_only_the_keys_it_names(tmp_path):
    f = tmp_path / "study.yaml"
    # 1e-5 without a dot is a string to PyYAML: accepted as the number it spells.
    f.write_text("epochs: 3\nsearch:\n  lr: [1e-5, 0.1]\n  beta: [0.5, 2]\n")
    r = load_ranges(f)
    assert r.lr == (1e-5, 0.1) and r.beta == (0.5, 2.0)
    assert (r.gamma, r.one_minus_alpha) == (Ranges().gamma, Ranges().one_minus_alpha)
    f.write_text("search:\n")
    assert load_ranges(f) == Ranges()


@pytest.mark.parametrize(("body", "key"), [
    ("search:\n  learning_rate: [1.0e-4, 1.0e-2]\n", "search.learning_rate"),
    ("search:\n  lr: 0.001\n", "search.lr"),
    ("search:\n  lr: [0.001]\n", "search.lr"),
    ("search:\n  gamma: [1, 2, 3]\n", "search.gamma"),
    ("search:\n  gamma: [50, 50]\n", "search.gamma"),
    ("search:\n  beta: [5, 1]\n", "search.beta"),
    ("search:\n  lr: [0, 0.1]\n", "search.lr"),
    ("search:\n  gamma: [1, 101]\n", "search.gamma"),
    ("search:\n  gamma: [-1, 50]\n", "search.gamma"),
    ("search:\n  one_minus_alpha: [0, 0.1]\n", "search.one_minus_alpha"),
    ("search:\n  one_minus_alpha: [0.1, 2]\n", "search.one_minus_alpha"),
    ("search:\n  beta: [-1, 1]\n", "search.beta"),
    ("search:\n  beta: [true, 3]\n", "search.beta"),
    ("search:\n  beta: [one, 3]\n", "search.beta"),
    ("search:\n  beta: [0, .inf]\n", "search.beta"),
    ("search:\n  arch: [residual, softmax]\n", "search.arch"),
    ("search:\n  arch: [paper, paper]\n", "search.arch"),
    ("search:\n  arch: paper\n", "search.arch"),
    ("search: [1, 2]\n", "search"),
    ("serach:\n  lr: [1.0e-4, 1.0e-2]\n", "search"),
    ("search:\n  lr: [1.0e-4, 1.0e-2\n", "search"),
])
def test_bad_yaml_is_a_one_line_config_error_naming_file_and_key(tmp_path, body, key):
    f = tmp_path / "ranges.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_ranges(f)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{f}: {key}: ")


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: search: cannot read"):
        load_ranges(tmp_path / "nope.yaml")


def test_ranges_built_in_code_are_validated_too():
    with pytest.raises(ConfigError, match="ranges: lr: must be > 0"):
        Ranges(lr=(-1.0, 1.0))
    assert Ranges(lr=[1e-3, 1e-2]).lr == (1e-3, 1e-2)  # lists become tuples
    assert math.isclose(Ranges().one_minus_alpha[0], 1e-4)


def test_the_network_is_searched_only_where_the_ranges_list_it(tmp_path):
    from optuna.distributions import CategoricalDistribution

    from tagtune.study.folder import train_config

    f = tmp_path / "ranges.yaml"
    f.write_text("search:\n  arch: [residual, paper]\n")
    ranges = load_ranges(f)
    assert ranges.arch == ("residual", "paper") and Ranges().arch == ()
    seen = set()
    for seed in range(12):
        trial, config = _ask("le", ranges, seed=seed)
        assert trial.distributions["arch"] == CategoricalDistribution(["residual", "paper"])
        seen.add(config["arch"])
        # The trial config's flat arch lands in model.arch, the study's other model keys kept.
        cfg = train_config({"method": "le", "model": {"layers": 1, "hidden": 16}, "cell": "x", **config})
        assert (cfg.model.arch, cfg.model.layers, cfg.model.hidden) == (config["arch"], 1, 16)
    assert seen == {"residual", "paper"}
    point = paper_point("mt", "sonyc", ranges)
    assert point["arch"] == "paper" and point["lr"] == 1e-3
    assert paper_point("b1", "openmic", Ranges(arch=("residual",)))["arch"] == "residual"
    assert "arch" not in paper_point("b1", "openmic")
    _, config = _ask("b1", ranges, point=paper_point("b1", "openmic", ranges))
    assert config == {"lr": 5e-4, "arch": "paper"}
