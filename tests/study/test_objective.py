"""The objective: tuned thresholds, f1_macro_tuned, and selection of epochs by each objective."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from tagtune.study import objective
from tagtune.study.config import ConfigError, TrainConfig
from tagtune.study.data import Split
from tagtune.study.eval.metrics import evaluate, f1_macro, tuned_thresholds
from tests.conftest import TINY_CONFIG

# Hand-made: class 0's positives score .9 .4 .35, its negatives .3 .1 -> best cut between .35 and .3;
# class 1's positives .3 .8, negatives .2 .25 .1 -> between .3 and .25; class 2 has no observed
# positive (keeps 0.5); the unobserved entry (row 4, class 1: .95, label 0) must not count.
Y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
S = np.array([[.9, .2, .7], [.4, .3, .1], [.3, .25, .2], [.1, .8, .3], [.35, .95, .6]])
M = np.ones_like(Y, dtype=bool)
M[4, 1] = False


def test_tuned_thresholds_on_a_hand_made_score_matrix():
    t = tuned_thresholds(Y, S, M)
    np.testing.assert_allclose(t, [0.325, 0.275, 0.5])
    # At these thresholds classes 0 and 1 are perfect (F1 1); class 2 predicts .7 and .6 present
    # on all-negative clips: F1 absent 2*3/(2*3+2) = .75, present 0 -> .375.
    assert f1_macro(Y, S, M, t) == pytest.approx((1 + 1 + 0.375) / 3)
    assert f1_macro(Y, S, M, t) > f1_macro(Y, S, M)  # at 0.5 class 0 misses two positives
    with pytest.raises(ValueError, match="threshold"):
        f1_macro(Y, S, M, np.array([0.5, 0.5]))


def test_tuned_thresholds_break_ties_toward_half_and_sit_between_scores():
    # One positive at .6 above one negative at .2: any cut in (.2, .6] is perfect; the candidates
    # are .8 (nothing), .4 (between) and .1 (everything) -> .4, the perfect one.
    t = tuned_thresholds(np.array([[1], [0]]), np.array([[.6], [.2]]))
    assert t[0] == pytest.approx(0.4)
    # Every observed clip positive: nothing to tune between -> 0.5.
    assert tuned_thresholds(np.array([[1], [1]]), np.array([[.1], [.2]]))[0] == 0.5


def test_evaluate_reports_tuned_f1_and_applies_validation_thresholds_to_test():
    split = Split(np.zeros((5, 1, 2), np.float32), Y * M, M, np.array([f"k{i}" for i in range(5)]),
                  Y, where="memory")
    val = evaluate(split, S, "val")
    assert val["val/f1_macro_tuned"] == pytest.approx(f1_macro(Y, S, M, tuned_thresholds(Y, S, M)))
    assert "val_full/f1_macro_tuned" in val
    # Given thresholds (the validation split's) are used as given, not re-tuned on this split.
    fixed = evaluate(split, S, "test", thresholds=np.full(3, 0.05))
    assert fixed["test/f1_macro_tuned"] == pytest.approx(f1_macro(Y, S, M, 0.05))
    assert fixed["test_full/f1_macro_tuned"] == pytest.approx(f1_macro(Y, S, None, 0.05))


# A hand-made history where the three objectives disagree: loss is best at epoch 1, AUPRC at 2,
# tuned F1 at 3 (and NaN, nothing to score, is never selected).
HISTORY = [
    {"val/loss": 0.30, "val/auprc_macro": 0.50, "val/f1_macro_tuned": 0.60},
    {"val/loss": 0.40, "val/auprc_macro": 0.80, "val/f1_macro_tuned": 0.55},
    {"val/loss": 0.50, "val/auprc_macro": 0.70, "val/f1_macro_tuned": 0.75},
    {"val/loss": 0.35, "val/auprc_macro": math.nan, "val/f1_macro_tuned": math.nan},
]


@pytest.mark.parametrize(("name", "epoch"), [("val/loss", 0), ("val/auprc_macro", 1),
                                             ("val/f1_macro_tuned", 2)])
def test_each_objective_orders_a_history_by_its_metric(name, epoch):
    scores = [objective.of_logs(logs, name) for logs in HISTORY]
    assert int(np.argmin(scores)) == epoch


@pytest.mark.parametrize(("name", "epoch"), [("val/loss", 1), ("val/auprc_macro", 2),
                                             ("val/f1_macro_tuned", 3)])
def test_the_trial_reports_its_objectives_best_so_far(name, epoch):
    from tagtune.launch.trainable import Reporter

    reporter = Reporter({**_config(), "objective": name})
    key = objective.score_key(name)
    reports = [reporter.metrics({**logs, "epoch": i + 1, "stage": "main"})
               for i, logs in enumerate(HISTORY)]
    best = HISTORY[epoch - 1][name]
    assert reports[-1][key] == best and reports[epoch - 1][key] == best
    assert name == "val/loss" or "val/best_loss" not in reports[-1]


def _config() -> dict:
    from tagtune.study.config import to_dict

    return to_dict(TINY_CONFIG)


def test_score_keys_and_modes():
    assert objective.score_key("val/loss") == "val/best_loss"  # what studies always reported
    assert objective.score_key("val/auprc_macro") == "val/best_auprc_macro"
    assert [objective.mode(o) for o in objective.OBJECTIVES] == ["min", "max", "max"]
    assert objective.better(0.7, 0.6, "val/auprc_macro") and objective.better(0.6, 0.7, "val/loss")
    assert not objective.better(math.nan, 0.1, "val/auprc_macro")
    with pytest.raises(ConfigError, match="objective: unknown objective 'val/f1'"):
        TrainConfig(objective="val/f1")


@pytest.mark.parametrize("name", objective.OBJECTIVES)
def test_fit_selects_the_epoch_best_by_its_objective(tiny_dataset, name):
    from tagtune.study.fit.train import evaluate_fit, fit

    cfg = replace(TINY_CONFIG, epochs=6, objective=name, seed=3)
    result = fit(tiny_dataset, cfg)
    scores = [objective.of_logs(logs, name) for logs in result.history]
    assert result.best["epoch"] == result.history[int(np.argmin(scores))]["epoch"]
    # The selected network is the one whose validation metrics were logged at that epoch.
    metrics = evaluate_fit(result, tiny_dataset)
    assert metrics[name] == pytest.approx(result.best[name], abs=1e-6)
    assert {"test/f1_macro_tuned", "test_full/f1_macro_tuned"} <= set(metrics)


def test_fit_selections_differ_between_objectives(tiny_dataset):
    """On the tiny data the objectives pick different epochs: selection really follows the setting."""
    from tagtune.study.fit.train import fit

    picked = {name: fit(tiny_dataset, replace(TINY_CONFIG, epochs=6, objective=name, seed=3)).best["epoch"]
              for name in objective.OBJECTIVES}
    assert len(set(picked.values())) > 1, picked


def test_rerank_choice_takes_the_best_mean_not_the_best_single_run():
    from tagtune.study.objective import mean_score, rerank_choice

    # Trial "a" had the best search run (0.80) but its extra seeds fall back (mean 0.60); "b"
    # holds up (mean 0.70): the re-rank chooses "b".
    scores = {"a": [0.80, 0.50, 0.50], "b": [0.75, 0.70, 0.65], "c": [0.70, 0.60, 0.60]}
    assert rerank_choice(scores, "val/auprc_macro") == "b"
    assert mean_score(scores["b"]) == pytest.approx(0.70)
    # A minimised objective: the lowest mean wins.
    losses = {"a": [0.10, 0.40, 0.40], "b": [0.12, 0.20, 0.22]}
    assert rerank_choice(losses, "val/loss") == "b"
    # A tie keeps the earlier candidate (the single run's ranking); a NaN run is no evidence: its
    # candidate is never chosen over a finite mean, and where no mean is finite the first stays.
    assert rerank_choice({"a": [0.5, 0.7], "b": [0.7, 0.5]}, "val/auprc_macro") == "a"
    assert rerank_choice({"a": [0.9, math.nan], "b": [0.4, 0.4]}, "val/auprc_macro") == "b"
    assert rerank_choice({"a": [math.nan], "b": [math.nan]}, "val/auprc_macro") == "a"
    # One candidate: the re-rank keeps the single best.
    assert rerank_choice({"a": [0.3]}, "val/f1_macro_tuned") == "a"
    with pytest.raises(ValueError):
        rerank_choice({}, "val/auprc_macro")
