"""The DCASE Urban Sound Tagging challenge's official metrics (SONYC-UST, DCASE 2019/2020 task 5).

Computed as ``metrics.py`` of sonyc-project/dcase2020task5-uststc-baseline computes them (the
2019 baseline's file is identical), vectorised:

- Per coarse category, the thresholds are the distinct scores >= 0.01 of the category's
  complete (non-X) columns, plus 1.0. At each threshold t a score >= t is a positive.
- Fine level, per category (the "X tag rule"): a clip whose truth has the category's uncertain
  X tag (``is_true_incomplete``) has no false positive on that category's fine tags; it gives
  one true positive if any fine tag is predicted and none of its predicted tags is a true one,
  and one false negative if nothing is predicted and no fine tag is true. True fine tags give
  true positives / false negatives as usual. Predicting an X tag is not modelled: tagtune has
  no X outputs, like the baseline, which writes 0 for them.
- Coarse level: plain per-category counts. A fine-level model's coarse score is the maximum of
  its category's fine scores (what the baseline's fine model writes in its coarse columns).
- P = TP / max(TP + FP, 0.5), R = TP / max(TP + FN, 0.5). AUPRC: the points sorted by recall,
  (0, 1) prepended and (1, 0) appended, trapezoidal rule. Macro: the mean over the 8
  categories (a category without any positive scores 0, as in the official code at the fine
  level; its coarse level would crash). Micro: at every threshold of any category, each
  category's counts at its smallest own threshold >= it, summed. Micro F1 is that curve's
  harmonic-mean F at its first threshold >= 0.5.
- Ties: the official code sorts by recall with numpy's default (unstable) quicksort, so the
  order of points of equal recall, and with it the area, depends on the numpy build; here
  the sort is stable over the official row order (descending thresholds per category,
  ascending thresholds for micro). On random releases (30 to 669 clips, X tags included)
  the official code with a stable sort gave every value here to 1e-16; with its own sort
  (numpy 2.4) macro AUPRC and micro F1 were identical and micro AUPRC within 1e-5 at 669
  clips, 5e-4 at 30.

Partially observed truth (synthetic data, or labels tagtune hides) extends this: a fine cell
that is not observed counts in no TP/FP/FN; where all fine tags of a category with an X tag
are unobserved, the X tag is taken as positive (tagtune's readers hide a category exactly
where its X tag is positive); a coarse cell is unknown where no fine tag is positive, the X
tag is not, and some fine tag is unobserved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagtune.study.data.core import DataError, Dataset, Split
from tagtune.study.data.sonyc import HIDDEN_POSITIVES, parse_taxonomy

MIN_THRESHOLD = 0.01  # the official evaluate(): lower scores are never thresholds
LEVELS = ("fine", "coarse")
NAMES = tuple(f"dcase_{level}_{m}" for level in LEVELS
              for m in ("micro_auprc", "macro_auprc", "micro_f1"))


@dataclass(frozen=True)
class Taxonomy:
    """How a dataset's classes sit in the SONYC-UST taxonomy (from ``meta["taxonomy"]``)."""

    level: str
    """``fine`` (classes are the fine tags without X) or ``coarse`` (the 8 coarse tags)."""
    group: np.ndarray
    """int (C,): the coarse category of each class (0-based, taxonomy order)."""
    has_x: np.ndarray
    """bool (G,): the category has an uncertain X tag."""
    hidden: dict[str, tuple[int, ...]]
    """Clip key -> classes positive in the verified truth but hidden because the category's X
    tag is positive too (``meta["dcase_hidden_positives"]``; fine level only)."""

    @property
    def G(self) -> int:
        return len(self.has_x)


def taxonomy_of(ds: Dataset) -> Taxonomy | None:
    """The dataset's taxonomy, or None where its classes are not SONYC-UST's."""
    doc = ds.meta.get("taxonomy")
    if doc is None:
        return None
    where = f"{ds.source}: meta.taxonomy"
    coarse, fine = parse_taxonomy(doc, where)
    groups = [t.group for t in coarse]
    has_x = np.array([any(f.uncertain and f.group == g for f in fine) for g in groups])
    complete = [f for f in fine if not f.uncertain]
    classes = list(ds.classes)
    if sorted(classes) == sorted(t.name for t in complete):
        level, by_name = "fine", {t.name: groups.index(t.group) for t in complete}
    elif sorted(classes) == sorted(t.name for t in coarse):
        level, by_name = "coarse", {t.name: groups.index(t.group) for t in coarse}
    else:
        raise DataError(ds.source, "meta.taxonomy", "the classes are neither its fine tags "
                        "(without X) nor its coarse tags")
    group = np.array([by_name[c] for c in classes])
    hidden = {}
    code_to_class = {c.split("_", 1)[0]: i for i, c in enumerate(classes)}
    for key, codes in ds.meta.get(HIDDEN_POSITIVES, {}).items():
        if level != "fine" or not all(c in code_to_class for c in codes):
            raise DataError(ds.source, f"meta.{HIDDEN_POSITIVES}",
                            f"clip {key!r}: {codes} are not fine classes of this dataset")
        hidden[key] = tuple(code_to_class[c] for c in codes)
    return Taxonomy(level, group, has_x, hidden)


def dcase_metrics(split: Split, scores: np.ndarray, tax: Taxonomy,
                  truth: np.ndarray | None = None) -> dict[str, float]:
    """The official metrics of one split, unprefixed (``dcase_fine_micro_auprc`` ...).

    ``truth``: complete truth (Y_full) instead of the split's observed labels: every cell
    observed, no X tag.
    """
    s = np.asarray(scores, dtype=np.float64)
    columns = _columns(tax)
    if s.size and (s.min() < 0 or s.max() > 1):
        raise DataError(split.where, "scores", "DCASE metrics need probabilities in [0, 1]")
    if truth is not None:
        y, obs = truth.astype(bool), np.ones(truth.shape, dtype=bool)
        inc = np.zeros((len(s), tax.G), dtype=bool)
    else:
        y, obs = split.Y.astype(bool), split.M.copy()
        for i, key in enumerate(split.keys.tolist()):
            for c in tax.hidden.get(key, ()):
                y[i, c] = obs[i, c] = True
        seen = np.stack([split.M[:, g].any(1) for g in columns], axis=1)
        inc = tax.has_x & ~seen if tax.level == "fine" else np.zeros((len(s), tax.G), bool)
    out = {}
    if tax.level == "fine":
        out |= _named("fine", [_fine_counts(s[:, g], y[:, g], obs[:, g], inc[:, k])
                               for k, g in enumerate(columns)])
    coarse = [_coarse_inputs(s[:, g], y[:, g], obs[:, g], inc[:, k])
              for k, g in enumerate(columns)]
    out |= _named("coarse", [_fine_counts(cs[:, None], cy[:, None], cobs[:, None],
                                          np.zeros(len(cs), bool)) for cs, cy, cobs in coarse])
    return out


def _columns(tax: Taxonomy) -> list[np.ndarray]:
    return [np.flatnonzero(tax.group == k) for k in range(tax.G)]


def _coarse_inputs(s, y, obs, inc):
    """A category's coarse score, truth and whether that truth is known, per clip."""
    pos = (y & obs).any(1) | inc
    return s.max(1), pos, pos | obs.all(1)


def _ge(sorted_values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """How many of ``sorted_values`` (ascending) are >= each of ``t``."""
    return len(sorted_values) - np.searchsorted(sorted_values, t, side="left")


def _fine_counts(s, y, obs, inc):
    """One category's thresholds (descending) and TP, FP, FN at each (official evaluate())."""
    flat = s.ravel()
    t = np.unique(np.r_[flat[flat >= MIN_THRESHOLD], 1.0])[::-1]
    pos = y & obs
    neg = ~y & obs & ~inc[:, None]  # the X rule: no fine false alarm where the truth has X
    tp = _ge(np.sort(s[pos]), t)
    fp = _ge(np.sort(s[neg]), t)
    fn = pos.sum() - tp
    # Clips with X in the truth: one TP if something is predicted (max >= t) and no true tag is
    # (max over true tags < t); one FN if nothing is predicted and no fine tag is true.
    top = s.max(1)
    top_true = np.where(pos, s, -np.inf).max(1)
    has_true = pos.any(1)
    tp = tp + _ge(np.sort(top[inc]), t) - _ge(np.sort(top_true[inc]), t)
    bare = inc & ~has_true
    fn = fn + bare.sum() - _ge(np.sort(top[bare]), t)
    return t, tp, fp, fn


def _pr(tp, fp, fn):
    return tp / np.maximum(tp + fp, 0.5), tp / np.maximum(tp + fn, 0.5)


def _auprc(tp, fp, fn) -> float:
    p, r = _pr(tp, fp, fn)
    order = np.argsort(r, kind="stable")
    r = np.r_[0.0, r[order], 1.0]
    p = np.r_[1.0, p[order], 0.0]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2))


def _named(level: str, per_category: list) -> dict[str, float]:
    macro = float(np.mean([_auprc(tp, fp, fn) for _, tp, fp, fn in per_category]))
    # Micro: every category's thresholds pooled, ascending; each category contributes its
    # counts at its smallest threshold >= the pooled one (all have 1.0, so one exists).
    u = np.unique(np.concatenate([t for t, *_ in per_category]))
    tp = fp = fn = 0
    for t, c_tp, c_fp, c_fn in per_category:
        asc = t[::-1]
        i = len(t) - 1 - np.searchsorted(asc, u, side="left")  # row in descending order
        tp, fp, fn = tp + c_tp[i], fp + c_fp[i], fn + c_fn[i]
    p, r = _pr(tp, fp, fn)
    k = int(np.searchsorted(u, 0.5, side="left"))
    f1 = 0.0 if p[k] == 0 or r[k] == 0 else float(2 * p[k] * r[k] / (p[k] + r[k]))
    return {f"dcase_{level}_micro_auprc": _auprc(tp, fp, fn),
            f"dcase_{level}_macro_auprc": macro, f"dcase_{level}_micro_f1": f1}
