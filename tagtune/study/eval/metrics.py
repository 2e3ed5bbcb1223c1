"""Evaluation metrics over the OBSERVED labels of a partially labeled split.

OpenMIC reports "F1 macro" (Gururani & Lerch 2021, following the OpenMIC-2018 baseline):
per class, over that class's observed clips, sklearn's F1 averaged over the two labels
(absent, present), then the mean over classes. SONYC-UST reports micro and macro AUPRC:
here both as scikit-learn's average precision over the observed entries (``auprc_*``) and,
where the dataset carries SONYC-UST's taxonomy, as the DCASE challenge's official metrics
(``dcase_*``, :mod:`tagtune.study.eval.dcase`), the figures SONYC-UST papers report.

Choices, each checked against the public code:
- Threshold: a score counts as present when ``score >= threshold``. The paper's
  ``metric_fn_openmic`` binarises with ``predictions >= threshold``; the OpenMIC baseline
  notebook uses RandomForest ``predict`` (a 0.5 tie goes to "absent", i.e. ``> 0.5``).
  We follow the paper; the two differ only for a score of exactly 0.5.
- ``labels=[0, 1]`` and ``zero_division=0``: a class whose observed clips are all negative
  and all predicted negative scores (1 + 0) / 2 = 0.5. The paper's ``classification_report``
  infers the labels from the data and would average over "absent" alone (1.0); fixing the
  label set keeps every class on the same two-label scale.
- ``auprc_*`` is ``sklearn.metrics.average_precision_score`` (step-wise, no interpolation).
  The DCASE evaluation and the paper's code instead integrate the PR curve with the
  trapezoidal rule (``auc`` over recall, with (0, 1) and (1, 0) appended). That is not
  optimistic: its first point above recall 0 is joined to (0, 0), the precision of the
  threshold 1.0, so it comes out BELOW average precision -- on 669 simulated clips x 23
  classes by 0.01-0.035 averaged over classes (more for rarer classes) and ~0.001 pooled
  (micro). Compare ``auprc_*`` with ``auprc_*``, and papers' tables with ``dcase_*``.
- ``f1_macro_tuned``: the same F1 macro with each class's threshold chosen to maximise that
  class's F1 on the observed VALIDATION labels (:func:`tuned_thresholds`), the thresholds then
  applied unchanged to the test split (``test/``, ``test_full/``); ``val/f1_macro_tuned`` is thus
  in-sample (the model-selection objective), ``test*/f1_macro_tuned`` is not. A threshold sits
  half-way between two adjacent validation scores, so a validation clip's prediction does not
  hang on a tie; a class with no observed positive or no observed negative keeps 0.5 (there is
  nothing to tune between). Ties between thresholds of equal F1 go to the one nearest 0.5.
- Classes with no observed entries (F1) or no observed positive (AUPRC, mAP) are skipped;
  if none is left the metric is nan rather than an error, so an epoch still reports.
"""

from __future__ import annotations

import numpy as np

from tagtune.study.data.core import DataError, Split
from tagtune.study.eval.dcase import Taxonomy, dcase_metrics

_WHERE = "metrics"


def _check(y_true, scores, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (y_true, scores, mask) of one (N, C) shape; nothing here writes to them."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if y_true.ndim != 2:
        raise DataError(_WHERE, "y_true", f"expected shape (N, C), got {y_true.shape}")
    if scores.shape != y_true.shape:
        raise DataError(_WHERE, "scores", f"expected shape {y_true.shape}, got {scores.shape}")
    if mask is None:
        mask = np.ones(y_true.shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != y_true.shape:
        raise DataError(_WHERE, "mask", f"expected shape {y_true.shape}, got {mask.shape}")
    if mask.dtype != bool:
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise DataError(_WHERE, "mask", "mask is not boolean (values other than 0 and 1)")
        mask = mask.astype(bool)
    if not np.isfinite(scores[mask]).all():
        raise DataError(_WHERE, "scores", "scores contain NaN or inf")
    if not np.isin(y_true[mask], (0, 1)).all():
        raise DataError(_WHERE, "y_true", "observed labels must be 0 or 1")
    return y_true, scores, mask


def f1_macro(y_true: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None,
             threshold: float | np.ndarray = 0.5) -> float:
    """OpenMIC F1 macro: per class, two-label macro F1 over its observed clips; class mean.
    ``threshold``: one for every class, or one per class (shape (C,))."""
    y_true, scores, mask = _check(y_true, scores, mask)
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim and threshold.shape != (y_true.shape[1],):
        raise DataError(_WHERE, "threshold", f"expected one or {y_true.shape[1]} thresholds, "
                        f"got shape {threshold.shape}")
    # sklearn's f1_score(labels=[0, 1], average="macro", zero_division=0) per class, from
    # the confusion counts of all classes at once (20 sklearn calls took ~20 ms an epoch):
    # the F1 of a label is 2 TP / (2 TP + FP + FN), 0 when that is 0 / 0.
    y, pred = (y_true == 1) & mask, (scores >= threshold) & mask
    tp, fp = (y & pred).sum(0), (~y & pred).sum(0)
    fn, tn = (y & ~pred).sum(0), mask.sum(0) - (y | pred).sum(0)
    f1_present = _ratio(2 * tp, 2 * tp + fp + fn)
    f1_absent = _ratio(2 * tn, 2 * tn + fn + fp)
    observed = mask.any(0)  # a class with nothing observed has no score, not a score of 0
    per_class = ((f1_present + f1_absent) / 2)[observed]
    return float(np.mean(per_class)) if per_class.size else float("nan")


def tuned_thresholds(y_true: np.ndarray, scores: np.ndarray,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Per class, the threshold that maximises that class's F1 (as :func:`f1_macro` scores it)
    over its observed clips: shape (C,). See the module docstring for ties and degenerate classes."""
    y_true, scores, mask = _check(y_true, scores, mask)
    out = np.full(y_true.shape[1], 0.5)
    for c in range(y_true.shape[1]):
        y, s = y_true[mask[:, c], c] == 1, scores[mask[:, c], c].astype(np.float64)
        if y.all() or not y.any():
            continue
        # Candidate rules: "present iff score >= t" for t at each distinct score (highest first),
        # and t above every score (nothing present). Counts by cumulative sums over the sorted scores.
        order = np.argsort(-s, kind="stable")
        s, y = s[order], y[order]
        last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last entry of each distinct score
        tp = np.r_[0, np.cumsum(y)[last]]
        fp = np.r_[0, (last + 1)] - tp
        pos, neg = y.sum(), (~y).sum()
        fn, tn = pos - tp, neg - fp
        f1 = (_ratio(2.0 * tp, 2.0 * tp + fp + fn) + _ratio(2.0 * tn, 2.0 * tn + fn + fp)) / 2
        distinct = s[last]
        # Rule k (0: nothing present; k >= 1: present from the k-th distinct score down) as a
        # threshold half-way between that score and the next lower one. Scores are probabilities:
        # above the top one is half-way to 1, below the lowest half-way to 0 (a unit out on a bound).
        top, bottom = distinct[0], distinct[-1]
        upper = np.r_[top + 1.0 if top >= 1 else 1.0, distinct]
        lower = np.r_[distinct, bottom - 1.0 if bottom <= 0 else 0.0]
        mid = (upper + lower) / 2
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out[c] = mid[best[np.argmin(np.abs(mid[best] - 0.5))]]
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(a.shape), where=b > 0)


def _ap(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision; nan without a positive (sklearn would warn and return 0).

    sklearn's ``average_precision_score`` -- sum over the distinct scores, highest first,
    of (R_n - R_{n-1}) P_n -- in numpy (21 sklearn calls took ~20 ms an epoch)."""
    y = y == 1
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last entry of each tied score
    tps = np.cumsum(y)[last]
    precision, recall = tps / (last + 1), tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def auprc(y_true: np.ndarray, scores: np.ndarray,
          mask: np.ndarray | None = None) -> tuple[float, float]:
    """(micro, macro) AUPRC over observed entries, as SONYC-UST reports.

    micro: every observed (clip, class) entry pooled into one ranking; macro: the mean of
    the per-class AP over classes with at least one observed positive.
    """
    y_true, scores, mask = _check(y_true, scores, mask)
    micro = _ap(y_true[mask], scores[mask])
    per_class = [_ap(y_true[mask[:, c], c], scores[mask[:, c], c])
                 for c in range(y_true.shape[1])]
    per_class = [v for v in per_class if not np.isnan(v)]
    macro = float(np.mean(per_class)) if per_class else float("nan")
    return micro, macro


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """mAP against complete truth: mean per-class AP over classes with at least one positive."""
    return auprc(y_true, scores)[1]


def evaluate(split: Split, scores: np.ndarray, prefix: str,
             taxonomy: Taxonomy | None = None,
             thresholds: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one split, keyed ``prefix/name``; ``prefix_full/name`` against Y_full.

    The observed-label metrics are what the paper reports; the ``_full`` ones exist only for
    synthetic data, to measure how far the observed-label figures are from the truth.
    ``taxonomy`` (:func:`tagtune.study.eval.dcase.taxonomy_of` the dataset) adds the DCASE family.
    ``thresholds``: the per-class thresholds of ``f1_macro_tuned`` (tuned on the validation
    split); None tunes them on this split's own observed labels (the validation split itself).
    """
    scores = np.asarray(scores)
    if scores.shape != split.Y.shape:
        problem = f"expected shape {split.Y.shape}, got {scores.shape}"
        raise DataError(split.where, "scores", problem)
    micro, macro = auprc(split.Y, scores, split.M)
    if thresholds is None:
        thresholds = tuned_thresholds(split.Y, scores, split.M)
    out = {
        f"{prefix}/f1_macro": f1_macro(split.Y, scores, split.M),
        f"{prefix}/f1_macro_tuned": f1_macro(split.Y, scores, split.M, thresholds),
        f"{prefix}/auprc_micro": micro,
        f"{prefix}/auprc_macro": macro,
    }
    if split.Y_full is not None:
        micro, macro = auprc(split.Y_full, scores)
        out |= {
            f"{prefix}_full/f1_macro": f1_macro(split.Y_full, scores),
            f"{prefix}_full/f1_macro_tuned": f1_macro(split.Y_full, scores, None, thresholds),
            f"{prefix}_full/auprc_micro": micro,
            f"{prefix}_full/auprc_macro": macro,
            f"{prefix}_full/map": mean_average_precision(split.Y_full, scores),
        }
    if taxonomy is not None:
        out |= {f"{prefix}/{k}": v for k, v in dcase_metrics(split, scores, taxonomy).items()}
        if split.Y_full is not None:
            full = dcase_metrics(split, scores, taxonomy, truth=split.Y_full)
            out |= {f"{prefix}_full/{k}": v for k, v in full.items()}
    return out
