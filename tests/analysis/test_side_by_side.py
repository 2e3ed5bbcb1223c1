"""F1 at 0.5, F1 with tuned thresholds and mAP side by side (issue 33), on hand-made replicates where
a method ranks well but calibrates badly: its tuned F1 and mAP are high, its F1 at 0.5 is not."""

from __future__ import annotations

import html as htmllib
import math
import re

import numpy as np
import pandas as pd
import pytest

from tagtune.analysis import stats
from tagtune.analysis.report import side_by_side_section

# B0 (missing = negative): low scores, so a poor F1 at 0.5 but the best ranking; B1 calibrated.
TRUE = {"b0": {"f1_macro": [0.40, 0.42, 0.44], "f1_macro_tuned": [0.62, 0.60, 0.64],
               "auprc_macro": [0.58, 0.60, 0.62]},
        "b1": {"f1_macro": [0.55, 0.57, 0.56], "f1_macro_tuned": [0.56, 0.57, 0.58],
               "auprc_macro": [0.50, 0.51, 0.52]}}


def replicates(split: str = "test_full", metrics=("f1_macro", "f1_macro_tuned", "auprc_macro"),
               observed_too: bool = True) -> pd.DataFrame:
    rows = []
    for method, figures in TRUE.items():
        for p in (0.0, 0.4):
            for seed in range(3):
                row = {"method": method, "proportion": p, "seed": seed, "cell": f"{method}@{p:.2f}"}
                row |= {f"{split}/{m}": figures[m][seed] - p / 10 for m in metrics}
                if observed_too and split == "test_full":  # the observed-label figures, elsewhere
                    row |= {f"test/{m}": 0.99 for m in metrics}
                rows.append(row)
    return pd.DataFrame(rows)


def test_full_truth_figures_are_chosen_and_each_has_its_own_column():
    t = stats.side_by_side(replicates())
    assert list(t.columns) == ["method", "proportion", "n",
                               "test_full/f1_macro", "test_full/f1_macro_sd",
                               "test_full/f1_macro_tuned", "test_full/f1_macro_tuned_sd",
                               "test_full/auprc_macro", "test_full/auprc_macro_sd"]
    assert list(zip(t["proportion"], t["method"], strict=True)) == [
        (0.0, "b0"), (0.0, "b1"), (0.4, "b0"), (0.4, "b1")]
    b0 = t[(t["method"] == "b0") & (t["proportion"] == 0.4)].iloc[0]
    assert b0["n"] == 3
    assert b0["test_full/f1_macro"] == pytest.approx(np.mean(TRUE["b0"]["f1_macro"]) - 0.04)
    assert b0["test_full/f1_macro_tuned"] == pytest.approx(np.mean(TRUE["b0"]["f1_macro_tuned"]) - 0.04)
    assert b0["test_full/auprc_macro"] == pytest.approx(np.mean(TRUE["b0"]["auprc_macro"]) - 0.04)
    assert b0["test_full/f1_macro_tuned_sd"] == pytest.approx(np.std(TRUE["b0"]["f1_macro_tuned"], ddof=1))


def test_the_text_table_shows_both_f1s_and_map_and_the_gap_between_the_f1s():
    text = stats.side_by_side_text(stats.side_by_side(replicates()))
    assert list(text.columns) == ["method", "removed", "n", "F1 @0.5", "F1 tuned", "mAP", "tuned − @0.5"]
    b0 = text[(text["method"] == "B0") & (text["removed"] == "0%")].iloc[0]
    sd = np.std(TRUE["b0"]["f1_macro"], ddof=1)
    assert b0["F1 @0.5"] == f"0.420 ± {sd:.3f}"
    assert b0["F1 tuned"].startswith("0.620 ± ") and b0["mAP"].startswith("0.600 ± ")
    assert b0["tuned − @0.5"] == "+0.200"  # ranks well, calibrates badly
    b1 = text[(text["method"] == "B1") & (text["removed"] == "0%")].iloc[0]
    assert b1["F1 @0.5"].startswith("0.560") and b1["tuned − @0.5"] == "+0.010"


def test_without_complete_truth_the_observed_test_labels_are_used():
    reps = replicates(split="test")
    assert stats.side_by_side_split(reps) == "test"
    t = stats.side_by_side(reps)
    assert "test/f1_macro_tuned" in t and not any(c.startswith("test_full/") for c in t.columns)
    assert t.loc[0, "test/f1_macro_tuned"] == pytest.approx(0.62)


def test_a_study_from_before_the_tuned_f1_shows_a_dash_not_an_error():
    reps = replicates(metrics=("f1_macro", "auprc_macro"), observed_too=False)
    t = stats.side_by_side(reps)
    assert t["test_full/f1_macro_tuned"].isna().all()
    text = stats.side_by_side_text(t)
    assert set(text["F1 tuned"]) == {"—"} and set(text["tuned − @0.5"]) == {"—"}
    assert text.loc[0, "F1 @0.5"].startswith("0.420")


def test_one_replicate_has_no_sd_and_no_replicate_an_empty_table():
    one = stats.side_by_side(replicates()[lambda d: d["seed"] == 0])
    assert one["n"].tolist() == [1] * 4 and one["test_full/f1_macro_sd"].isna().all()
    assert stats.side_by_side_text(one).loc[0, "F1 @0.5"] == "0.400"
    empty = stats.side_by_side(replicates().iloc[0:0])
    assert empty.empty and "test/f1_macro_tuned" in empty.columns  # no figure: no full truth seen


def test_the_report_section_says_why_and_holds_every_figure():
    section = side_by_side_section(stats.side_by_side(replicates()))
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", section))
    assert "F1 at 0.5, F1 with tuned thresholds and mAP" in text
    assert "can rank well yet calibrate badly" in text and "complete truth" in text
    headers = re.findall(r"<th>([^<]*)</th>", section)
    assert headers == ["method", "removed", "n", "F1 @0.5", "F1 tuned", "mAP", "tuned − @0.5"]
    assert "0.420 ± " in section and "0.620 ± " in section and "+0.200" in section
    observed = side_by_side_section(stats.side_by_side(replicates(split="test")))
    assert "observed labels of the test split" in observed and "test/f1_macro_tuned" in observed


def test_metric_names_read_in_words():
    assert stats.metric_label("test_full/f1_macro_tuned") == "F1 macro (tuned thresholds) (test, full truth)"
    assert not math.isnan(stats.side_by_side(replicates())["test_full/f1_macro"].iloc[0])
