"""Metrics against values computed by hand on tiny matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tagtune.study.data import Split
from tagtune.study.eval.metrics import auprc, evaluate, f1_macro, mean_average_precision

# 5 clips x 2 classes; (clip 4, class 0) and (clip 0, class 1) are missing.
Y = np.array([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]], dtype=np.float32)
S = np.array([[0.9, 0.1], [0.2, 0.6], [0.4, 0.9], [0.7, 0.8], [0.8, 0.3]], dtype=np.float32)
M = np.array([[1, 0], [1, 1], [1, 1], [1, 1], [0, 1]], dtype=bool)
# Class 0, observed clips 0-3: y = 1 0 1 0, pred (>= 0.5) = 1 0 0 1
#   present: TP=1 FP=1 FN=1 -> F1 = 2/(2+1+1) = 1/2; absent: TP=1 FP=1 FN=1 -> 1/2; macro 1/2
# Class 1, observed clips 1-4: y = 0 1 1 0, pred = 1 1 1 0
#   present: TP=2 FP=1 FN=0 -> 4/5;                   absent: TP=1 FP=0 FN=1 -> 2/3; macro 11/15
# Mean over classes: (1/2 + 11/15) / 2 = 37/60
F1_HAND = 37 / 60


def test_f1_macro_matches_hand_computation():
    assert f1_macro(Y, S, M) == pytest.approx(F1_HAND)


def test_f1_mask_excludes_entries():
    Y2, S2 = Y.copy(), S.copy()
    Y2[4, 0], S2[4, 0] = 0, 0.99  # flip the label and the score of both missing entries
    Y2[0, 1], S2[0, 1] = 1, 0.01
    assert f1_macro(Y2, S2, M) == pytest.approx(F1_HAND)
    assert f1_macro(Y, S) != pytest.approx(F1_HAND)  # without the mask they do count
    # Unobserved labels may hold anything (OpenMIC stores 0.5 confidence there).
    Y3 = Y.copy()
    Y3[~M] = 0.5
    assert f1_macro(Y3, S, M) == pytest.approx(F1_HAND)


def test_f1_threshold_edge_is_inclusive():
    y = np.array([[1], [0]])
    s = np.array([[0.5], [0.4999]])
    assert f1_macro(y, s) == 1.0  # 0.5 >= 0.5 is "present": TP=1, TN=1
    # With the threshold above 0.5 both are "absent": present F1 = 0 (TP=0, FN=1);
    # absent: TP=1 FP=1 FN=0 -> 2/3; macro 1/3.
    assert f1_macro(y, s, threshold=0.6) == pytest.approx(1 / 3)


def test_f1_class_without_observed_entries_is_skipped():
    y = np.column_stack([Y, np.ones(5)])
    s = np.column_stack([S, np.zeros(5)])  # would score 0 if it were counted
    m = np.column_stack([M, np.zeros(5, dtype=bool)])
    assert f1_macro(y, s, m) == pytest.approx(F1_HAND)
    assert math.isnan(f1_macro(Y, S, np.zeros_like(M)))


def test_f1_class_with_only_negatives_observed():
    y = np.zeros((3, 1))
    # All predicted absent: absent F1 = 1, present F1 = 0 by zero_division=0 -> 1/2.
    assert f1_macro(y, np.array([[0.1], [0.2], [0.3]])) == pytest.approx(0.5)
    # One false positive: absent TP=2 FN=1 -> 4/5; present TP=0 FP=1 -> 0; macro 2/5.
    assert f1_macro(y, np.array([[0.1], [0.2], [0.7]])) == pytest.approx(0.4)


def test_auprc_matches_hand_average_precision():
    # Ranked: 0.9 pos (P=1, R=1/2), 0.8 neg, 0.7 pos (P=2/3, R=1), 0.1 neg.
    # AP = sum (R_n - R_n-1) P_n = 1/2 * 1 + 1/2 * 2/3 = 5/6 (the trapezoid rule would differ).
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.9], [0.8], [0.7], [0.1]])
    micro, macro = auprc(y, s)
    assert micro == pytest.approx(5 / 6)
    assert macro == pytest.approx(5 / 6)


# Imbalanced: class 0 has 1 positive of 4 (ranked first), class 1 has 3 of 4.
YI = np.array([[1, 0], [0, 1], [0, 1], [0, 1]])
SI = np.array([[0.9, 0.95], [0.8, 0.5], [0.7, 0.4], [0.6, 0.3]])
# Class 0: AP = 1. Class 1: neg 0.95, then pos at P=1/2, 2/3, 3/4, each R step 1/3 -> 23/36.
MACRO_HAND = (1 + 23 / 36) / 2  # 59/72
# Pooled ranking: .95 n, .9 p (P=1/2), .8 n, .7 n, .6 n, .5 p (P=2/6), .4 p (P=3/7), .3 p (P=4/8)
MICRO_HAND = (1 / 2 + 2 / 6 + 3 / 7 + 4 / 8) / 4  # 37/84


def test_auprc_micro_and_macro_differ_on_imbalanced_classes():
    micro, macro = auprc(YI, SI)
    assert micro == pytest.approx(MICRO_HAND)
    assert macro == pytest.approx(MACRO_HAND)
    assert micro < macro - 0.3


def test_auprc_mask_and_classes_without_positives():
    # Masked entries with extreme values change nothing.
    y = np.vstack([YI, [[1, 1]]])
    s = np.vstack([SI, [[0.0, 0.0]]])
    m = np.vstack([np.ones_like(YI, dtype=bool), [[False, False]]])
    assert auprc(y, s, m) == pytest.approx((MICRO_HAND, MACRO_HAND))
    # A class whose observed labels are all negative is left out of the macro mean;
    # its negatives, scored below everything, leave the pooled ranking's AP unchanged.
    y = np.column_stack([YI, np.zeros(4)])
    s = np.column_stack([SI, np.full(4, 0.01)])
    assert auprc(y, s) == pytest.approx((MICRO_HAND, MACRO_HAND))
    micro, macro = auprc(np.zeros((3, 2)), np.full((3, 2), 0.5))
    assert math.isnan(micro) and math.isnan(macro)


def test_mean_average_precision():
    assert mean_average_precision(YI, SI) == pytest.approx(MACRO_HAND)
    y = np.column_stack([YI, np.zeros(4)])  # no positive: skipped, not counted as 0
    assert mean_average_precision(y, np.column_stack([SI, SI[:, 0]])) == pytest.approx(MACRO_HAND)


def test_inputs_are_not_mutated():
    arrays = [Y.copy(), S.copy(), M.copy()]
    for a in arrays:
        a.setflags(write=False)  # any in-place write would raise
    before = [a.copy() for a in arrays]
    f1_macro(*arrays)
    auprc(*arrays)
    mean_average_precision(arrays[0], arrays[1])
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "call",
    [
        lambda: f1_macro(Y, S[:, :1]),
        lambda: f1_macro(Y, S, M[:4]),
        lambda: auprc(Y[0], S[0]),
        lambda: auprc(Y, S, M.astype(float) * 0.5),
        lambda: f1_macro(Y, np.where(M, np.nan, S), M),
        lambda: f1_macro(Y * 2, S, M),
    ],
)
def test_bad_input_raises_one_line_value_error(call):
    with pytest.raises(ValueError) as e:
        call()
    assert "\n" not in str(e.value)


def _split(full: bool) -> Split:
    keys = np.array([f"k{i}" for i in range(5)])
    # Y_full disagrees with what Y would say on the missing entries, so the two families differ.
    Y_full = np.where(M, Y, 1 - Y) if full else None
    return Split(np.zeros((5, 1, 2), np.float32), Y, M, keys, Y_full)


def test_evaluate_keys_and_values():
    out = evaluate(_split(full=False), S, "test")
    assert set(out) == {"test/f1_macro", "test/f1_macro_tuned", "test/auprc_micro", "test/auprc_macro"}
    assert out["test/f1_macro"] == pytest.approx(F1_HAND)
    assert (out["test/auprc_micro"], out["test/auprc_macro"]) == auprc(Y, S, M)

    split = _split(full=True)
    out = evaluate(split, S, "test")
    assert set(out) == {
        "test/f1_macro", "test/f1_macro_tuned", "test/auprc_micro", "test/auprc_macro",
        "test_full/f1_macro", "test_full/f1_macro_tuned", "test_full/auprc_micro",
        "test_full/auprc_macro", "test_full/map",
    }
    assert out["test/f1_macro"] == pytest.approx(F1_HAND)
    assert out["test_full/f1_macro"] == pytest.approx(f1_macro(split.Y_full, S))
    assert out["test_full/f1_macro"] != pytest.approx(F1_HAND)
    assert out["test_full/map"] == pytest.approx(mean_average_precision(split.Y_full, S))
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(ValueError):
        evaluate(split, S[:4], "test")
