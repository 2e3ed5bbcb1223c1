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
    assert stats.bootstrap(d, seed=5) == stats.bootstrap(d, seed=5)
    lo, hi, _ = stats.bootstrap(d)
    assert lo < 0.02 < hi and lo > 0
    assert stats.bootstrap(np.zeros(4))[:2] == (0.0, 0.0)


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
    assert pair(few, "mt", "b1", 0.4)["verdict"] == "too few seeds"  # every pair > 0, yet only 3
    assert "only 3 seeds: too few for a verdict (5 needed)" in text and "95% CI [+0.0" in text
    single = stats.paired_comparisons(reps[reps["seed"] == 0], METRIC)
    assert pair(single, "mt", "b1", 0.4)["verdict"] == "too few pairs"


def test_lower_is_better_for_a_loss():
    loss = "test/loss"
    t = pd.DataFrame([{"method": m, "proportion": 0.2, "seed": s, loss: v + 0.01 * s}
                      for m, v in (("b1", 0.5), ("mt", 0.4)) for s in range(5)])
    r = pair(stats.paired_comparisons(t, loss), "mt", "b1", 0.2)
    assert r["diff"] == pytest.approx(-0.1) and r["verdict"] == "better"
    assert stats.statement(r, loss).startswith("MT beats B1 at 20% missing: -0.100 loss")
    summary, pairs = stats.summary_table(t, loss), stats.paired_comparisons(t, loss)
    assert stats.answer_table(summary, pairs, loss)["best"].tolist() == ["MT"]  # the lower mean


def test_answer_table_leads_with_the_best_method_its_margin_and_whether_it_is_clear(reps):
    summary = stats.summary_table(reps, METRIC)
    pairs = stats.paired_comparisons(reps, METRIC)
    answer = stats.answer_table(summary, pairs, METRIC)
    assert list(answer.columns) == ["removed", "best", "mean ± sd (n)", "margin over B1 [95% CI]",
                                    "clear"]
    b1_best, mt_best = answer.iloc[0], answer.iloc[1]
    assert (b1_best["removed"], b1_best["best"]) == ("0%", "B1")
    assert b1_best["margin over B1 [95% CI]"] == "B1 itself is best"
    assert (mt_best["removed"], mt_best["best"]) == ("40%", "MT")
    r = pair(pairs, "mt", "b1", 0.4)
    assert mt_best["margin over B1 [95% CI]"] == f"+0.030 [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    assert mt_best["clear"] == "yes (Holm p < 0.001)"
    # Without B1 in the study, the margin is over B0.
    no_b1 = stats.summary_table(reps[reps.method != "b1"], METRIC)
    other = stats.answer_table(no_b1, stats.paired_comparisons(reps[reps.method != "b1"], METRIC), METRIC)
    assert "margin over B0 [95% CI]" in other.columns


def test_conclusions_are_the_clear_differences_after_holm(reps):
    summary = stats.summary_table(reps, METRIC)
    lines = stats.conclusions(summary, stats.paired_comparisons(reps, METRIC), METRIC)
    assert lines[0].startswith("B0 loses to B1 at 0% missing")
    assert any(line.startswith("MT beats B1 at 40% missing") for line in lines)
    assert "Holm-adjusted p < 0.001" in lines[0]
    assert not any(line.startswith("MT vs B1 at 0% missing") for line in lines)
    assert lines[-1].startswith("The other 2 comparisons") and "over the 6 tested" in lines[-1]
    few = reps[reps["seed"] < 3]  # 3 seeds: no verdict anywhere, and it says so
    assert stats.conclusions(stats.summary_table(few, METRIC), stats.paired_comparisons(few, METRIC),
                             METRIC) == ["No comparison with the baselines has the 5 seeds a verdict "
                                         "needs (6 with fewer): their intervals are in the "
                                         "report's paired comparisons."]


def test_holm_adjusts_step_down_and_leaves_nan_out():
    adjusted = stats.holm([0.01, 0.04, 0.03, math.nan])
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])  # 3 x 0.01, then max(2 x 0.03, 0.04)
    assert math.isnan(adjusted[3])


def test_holm_turns_a_lone_clear_difference_into_no_clear_one():
    # One borderline win (bootstrap p ~ 0.02) among four flat comparisons: clear alone, not
    # within the family of five (Holm multiplies the smallest p by 5).
    borderline = [0.03, 0.02, 0.025, -0.015, 0.015, 0.02]
    flat = [0.01, -0.01, 0.02, -0.02, 0.005, -0.005]
    rows_ = []
    for p in (0.0, 0.1, 0.2, 0.4, 0.8):
        for s in range(6):
            base = 0.5 + 0.01 * s
            lift = borderline[s] if p == 0.4 else flat[s]
            rows_.append({"method": "b1", "proportion": p, "seed": s, METRIC: base})
            rows_.append({"method": "mt", "proportion": p, "seed": s, METRIC: base + lift})
    t = pd.DataFrame(rows_)
    alone = stats.paired_comparisons(t[t.proportion == 0.4], METRIC)
    family = stats.paired_comparisons(t, METRIC)
    r_alone, r_family = pair(alone, "mt", "b1", 0.4), pair(family, "mt", "b1", 0.4)
    assert r_alone["p_boot"] == r_family["p_boot"] < stats.ALPHA
    assert r_alone["verdict"] == "better"
    assert r_family["p_holm"] >= stats.ALPHA and r_family["verdict"] == "no clear difference"


def test_headline_metric_prefers_full_truth_then_observed(reps):
    table = reps.assign(phase="replicate")
    assert headline_metric(table) == METRIC
    observed = table.drop(columns=[METRIC]).assign(**{"test/f1_macro": 0.5})
    assert headline_metric(observed) == "test/f1_macro"
    assert headline_metric(table, "test_full/f1_macro") == METRIC
    with pytest.raises(ValueError, match="metric: 'test/auprc_macro' not in the results"):
        headline_metric(table, "test/auprc_macro")
