"""The statistics on a hand-built replicate table whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tagtune.analysis import stats
from tagtune.analysis.table import headline_metric

METRIC = "test_full/f1_macro"
SEEDS = list(range(6))
B1 = {0.0: [0.40, 0.42, 0.44, 0.46, 0.48, 0.50], 0.4: [0.30, 0.31, 0.33, 0.32, 0.35, 0.34]}
MT_MINUS_B1 = {0.4: [0.03, 0.02, 0.04, 0.03, 0.035, 0.025],  # mean +0.030, all > 0
               0.0: [0.01, -0.01, 0.02, -0.02, 0.005, -0.005]}  # mean 0, both signs
B0_MINUS_B1 = {0.0: [-0.05, -0.06, -0.04, -0.05, -0.055, -0.045], 0.4: [0.0] * 6}


def rows(method, values_by_p):
    return [{"method": method, "proportion": p, "seed": s, "cell": f"{method}@{p:.2f}", METRIC: v}
            for p, values in values_by_p.items() for s, v in zip(SEEDS, values, strict=False)]


@pytest.fixture
def reps() -> pd.DataFrame:
    mt = {p: np.add(B1[p], d).tolist() for p, d in MT_MINUS_B1.items()}
    b0 = {p: np.add(B1[p], d).tolist() for p, d in B0_MINUS_B1.items()}
    return pd.DataFrame(rows("b1", B1) + rows("mt", mt) + rows("b0", b0))


def test_summary_is_mean_and_sample_sd(reps):
    s = stats.summary_table(reps, METRIC).set_index(["method", "proportion"])
    assert s.loc[("b1", 0.0), "n"] == 6
    assert s.loc[("b1", 0.0), "mean"] == pytest.approx(0.45)
    assert s.loc[("b1", 0.0), "sd"] == pytest.approx(np.std(B1[0.0], ddof=1))
    assert s.loc[("mt", 0.4), "mean"] == pytest.approx(np.mean(B1[0.4]) + 0.03)
    wide = stats.wide_summary(stats.summary_table(reps, METRIC))
    assert list(wide.columns) == ["0% missing", "40% missing"]
    assert list(wide.index) == ["B0", "B1", "MT"]
    assert wide.loc["B1", "0% missing"] == f"0.450 ± {np.std(B1[0.0], ddof=1):.3f} (n=6)"


def test_one_replicate_has_no_sd():
    one = pd.DataFrame(rows("b1", {0.2: [0.5]}))
    s = stats.summary_table(one, METRIC)
    assert s["n"].tolist() == [1] and math.isnan(s["sd"][0])
    assert stats.wide_summary(s).iloc[0, 0] == "0.500 ± n/a (n=1)"


def pair(pairs, method, ref, p):
    hit = pairs[(pairs["method"] == method) & (pairs["reference"] == ref)
                & (pairs["proportion"] == p)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_paired_difference_ci_and_wilcoxon(reps):
    pairs = stats.paired_comparisons(reps, METRIC)
    r = pair(pairs, "mt", "b1", 0.4)
    d = np.array(MT_MINUS_B1[0.4])
    assert r["n"] == 6 and r["diff"] == pytest.approx(0.03)
    assert r["ci_low"] <= 0.03 <= r["ci_high"] and r["ci_low"] > 0
    assert r["ci_low"] >= d.min() - 1e-12 and r["ci_high"] <= d.max() + 1e-12
    # Differences recomputed from the table, as the code sees them (float sums), go to scipy.
    assert r["p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(
        reps[reps.method.eq("mt") & reps.proportion.eq(0.4)][METRIC].to_numpy()
        - reps[reps.method.eq("b1") & reps.proportion.eq(0.4)][METRIC].to_numpy()).pvalue)
    assert r["verdict"] == "better"
    flat = pair(pairs, "mt", "b1", 0.0)
    assert flat["ci_low"] < 0 < flat["ci_high"] and flat["verdict"] == "no clear difference"
    assert pair(pairs, "b0", "b1", 0.0)["verdict"] == "worse"


def test_pairs_match_on_seed_not_on_row_order(reps):
    shuffled = reps.sample(frac=1.0, random_state=3)
    a = stats.paired_comparisons(reps, METRIC)
    b = stats.paired_comparisons(shuffled, METRIC)
    pd.testing.assert_frame_equal(a.sort_values(list(a.columns[:3])).reset_index(drop=True),
                                  b.sort_values(list(b.columns[:3])).reset_index(drop=True))
    lost = reps[~((reps["method"] == "mt") & (reps["seed"] == 0))]  # MT's seed 0 failed
    assert pair(stats.paired_comparisons(lost, METRIC), "mt", "b1", 0.4)["n"] == 5


def test_each_baseline_pair_is_compared_once(reps):
    pairs = stats.paired_comparisons(reps, METRIC)
    assert set(zip(pairs["method"], pairs["reference"], strict=True)) == {
        ("b0", "b1"), ("mt", "b1"), ("mt", "b0")}


def test_bootstrap_is_seeded_and_covers_the_true_mean():
    d = np.random.default_rng(1).normal(0.02, 0.01, size=40)
    assert stats.bootstrap_ci(d, seed=5) == stats.bootstrap_ci(d, seed=5)
    lo, hi = stats.bootstrap_ci(d)
    assert lo < 0.02 < hi and lo > 0
    assert stats.bootstrap_ci(np.zeros(4)) == (0.0, 0.0)


def test_wilcoxon_needs_five_pairs_and_a_nonzero_difference():
    assert math.isnan(stats.wilcoxon_p(np.array([0.1, 0.2, 0.3, 0.4])))
    assert math.isnan(stats.wilcoxon_p(np.zeros(6)))
    d = np.array([0.1, 0.2, -0.05, 0.3, 0.15])
    assert stats.wilcoxon_p(d) == scipy_stats.wilcoxon(d).pvalue


def test_statements_in_words(reps):
    pairs = stats.paired_comparisons(reps, METRIC)
    win = stats.statement(pair(pairs, "mt", "b1", 0.4), METRIC)
    assert win.startswith("MT beats B1 at 40% missing: +0.030 F1 macro, 95% CI [+0.0")
    assert "Wilcoxon p = " in win and "6 seeds" in win
    flat = stats.statement(pair(pairs, "mt", "b1", 0.0), METRIC)
    assert flat.startswith("MT vs B1 at 0% missing: no clear difference (+0.000 F1 macro")
    lose = stats.statement(pair(pairs, "b0", "b1", 0.0), METRIC)
    assert lose.startswith("B0 loses to B1 at 0% missing: -0.050 F1 macro")
    few = stats.paired_comparisons(reps[reps["seed"] < 3], METRIC)
    text = stats.statement(pair(few, "mt", "b1", 0.4), METRIC)
    assert "only 3 seeds" in text and "too few for a Wilcoxon test" in text
    single = stats.paired_comparisons(reps[reps["seed"] == 0], METRIC)
    assert pair(single, "mt", "b1", 0.4)["verdict"] == "too few pairs"


def test_lower_is_better_for_a_loss():
    loss = "test/loss"
    t = pd.DataFrame([{"method": m, "proportion": 0.2, "seed": s, loss: v + 0.01 * s}
                      for m, v in (("b1", 0.5), ("mt", 0.4)) for s in range(5)])
    r = pair(stats.paired_comparisons(t, loss), "mt", "b1", 0.2)
    assert r["diff"] == pytest.approx(-0.1) and r["verdict"] == "better"
    assert stats.statement(r, loss).startswith("MT beats B1 at 20% missing: -0.100 loss")
    assert "MT has the best mean" in stats.best_per_proportion(stats.summary_table(t, loss), loss)[0]


def test_conclusions_name_the_best_method_and_the_clear_differences(reps):
    summary = stats.summary_table(reps, METRIC)
    lines = stats.conclusions(summary, stats.paired_comparisons(reps, METRIC), METRIC)
    assert lines[0].startswith("At 0% missing, B1 has the best mean F1 macro: 0.450 ± ")
    assert lines[1].startswith("At 40% missing, MT has the best mean F1 macro")
    assert any(line.startswith("MT beats B1 at 40% missing") for line in lines)
    assert not any(line.startswith("MT vs B1 at 0% missing") for line in lines)
    assert lines[-1].startswith("The other 2 comparisons")


def test_headline_metric_prefers_full_truth_then_observed(reps):
    table = reps.assign(phase="replicate")
    assert headline_metric(table) == METRIC
    observed = table.drop(columns=[METRIC]).assign(**{"test/f1_macro": 0.5})
    assert headline_metric(observed) == "test/f1_macro"
    assert headline_metric(table, "test_full/f1_macro") == METRIC
    with pytest.raises(ValueError, match="metric: 'test/auprc_macro' not in the results"):
        headline_metric(table, "test/auprc_macro")
