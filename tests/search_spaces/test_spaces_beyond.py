"""Search spaces of the methods beyond the paper: their parameters, the authors' point first."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from tagtune.search_spaces import DEFAULT_RANGES_FILE, SPACES, Ranges, paper_point
from tagtune.study.config import METHODS, ConfigError, TrainConfig

LR = FloatDistribution(1e-4, 1e-2, log=True)
EXPECTED = {  # method -> Optuna distributions (default ranges), config keys, the enqueued point
    "lemt": ({"lr": LR, "gamma": FloatDistribution(1, 99),
              "one_minus_alpha": FloatDistribution(1e-4, 1e-1, log=True), "beta": FloatDistribution(0, 10)},
             {"lr": 1e-3, "gamma": 10.0, "alpha": 0.999, "beta": 3.0}),
    "llr": ({"lr": LR, "delta_rel": FloatDistribution(1e-4, 1e-2, log=True)},
            {"lr": 1e-3, "delta_rel": 0.002}),
    "hill": ({"lr": LR, "margin": FloatDistribution(0.5, 1.0)}, {"lr": 1e-3, "margin": 1.0}),
    "splc": ({"lr": LR, "splc_tau": FloatDistribution(0.5, 0.95)}, {"lr": 1e-3, "splc_tau": 0.6}),
    "pbce": ({"lr": LR, "pbce_gamma": FloatDistribution(-1, 3)}, {"lr": 1e-3, "pbce_gamma": 1.0}),
    "wan": ({"lr": LR}, {"lr": 1e-3}),
    "epr": ({"lr": LR}, {"lr": 1e-3}),
}


def _ask(method: str, point: dict | None = None, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    if point is not None:
        study.enqueue_trial(point)
    trial = study.ask()
    return trial, SPACES[method](trial, Ranges())


def test_every_method_has_a_space():
    assert set(SPACES) == set(METHODS) and set(EXPECTED) <= set(METHODS)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_each_new_method_searches_its_parameters_and_enqueues_its_authors_values(method):
    distributions, first = EXPECTED[method]
    for seed in range(5):
        trial, config = _ask(method, seed=seed)
        assert trial.distributions == distributions
        TrainConfig(method=method, **config)  # every value a valid field value
    _, got = _ask(method, point=paper_point(method, "openmic"))
    assert got == pytest.approx(first)
    cfg = TrainConfig(method=method, **got)  # the authors' values are also the config's defaults
    defaults = TrainConfig(method=method).params
    assert all(getattr(cfg.params, k) == getattr(defaults, k)
               for k in got if k not in ("lr", "gamma", "alpha"))


def test_new_ranges_are_validated_and_documented():
    with pytest.raises(ConfigError, match="ranges: splc_tau: must be within"):
        Ranges(splc_tau=(0.5, 1.0))
    with pytest.raises(ConfigError, match="ranges: delta_rel: must be within"):
        Ranges(delta_rel=(0.0, 0.1))
    text = DEFAULT_RANGES_FILE.read_text()
    for name in ("delta_rel", "margin", "splc_tau", "pbce_gamma"):
        assert f"  {name}:" in text
