"""The report says what "clear" means in words that fit the number of comparisons it has."""

from __future__ import annotations

from tagtune.analysis import stats
from tagtune.analysis.report import clear_rule


def test_no_comparison_says_there_is_none_and_counts_nothing():
    text = clear_rule(0)
    assert "0 comparisons" not in text and "Holm-corrected over" not in text
    assert f"at least {stats.MIN_VERDICT_PAIRS} seeds and this report has none" in text


def test_one_comparison_is_its_own_family():
    text = clear_rule(1)
    assert "the report's only comparison" in text and "comparisons" not in text.replace(
        "only comparison", "")


def test_many_comparisons_are_holm_corrected_over_their_number():
    assert "Holm-corrected over the 7 comparisons of this report" in clear_rule(7)
