"""The DCASE UST official metrics: hand-computed cases (the X-tag rule among them), an
independent per-threshold reference written from the official code's formulas, and the places
the metrics appear (evaluate, sonyc-like data)."""

from __future__ import annotations

import numpy as np
import pytest

from tagtune.study.data import Dataset, Split
from tagtune.study.data.core import DataError
from tagtune.study.data.sonyc import UST_TAXONOMY
from tagtune.study.data.synth import synthesize
from tagtune.study.eval.dcase import NAMES, dcase_metrics, taxonomy_of
from tagtune.study.eval.metrics import evaluate

# Two categories: "a" has two fine tags and an uncertain X tag, "b" one fine tag and no X.
TAX = {"coarse": {"1": "a", "2": "b"}, "fine": {"1": {"1": "a1", "2": "a2", "X": "ax"},
                                                "2": {"1": "b1"}}}
FINE = ("1-1_a1", "1-2_a2", "2-1_b1")
T, F = 1, 2


def dataset(Y, M, classes=FINE, hidden=None, Y_full=None, tax=TAX) -> Dataset:
    Y, M = np.asarray(Y, np.float32), np.asarray(M, bool)
    n = len(Y)
    X = np.zeros((n, T, F), np.float32)
    test = Split(X, Y, M, np.array([f"c{i}" for i in range(n)]), Y_full, where="t")
    other = [Split(X, Y, M, np.array([f"{p}{i}" for i in range(n)]), Y_full) for p in "rv"]
    meta = {"taxonomy": tax} | ({"dcase_hidden_positives": hidden} if hidden else {})
    return Dataset(other[0], other[1], test, classes=classes, meta=meta)


# The X-rule case, clip by clip (scores of 1-1, 1-2, 2-1):
# c0: truth {1-1, 2-1}               scores .9 .2 .9
# c1: truth {1-X}: group a hidden    scores .6 .1 .1
# c2: truth {}                       scores .4 .7 .55
# c3: truth {1-X, 1-2}: 1-2 hidden   scores .8 .3 .05
Y = [[1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
M = [[1, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]]
S = np.array([[.9, .2, .9], [.6, .1, .1], [.4, .7, .55], [.8, .3, .05]])


def test_x_rule_micro_f1_by_hand():
    """At the first threshold >= 0.5 (0.55, from b1; a's counts come from its 0.6):
    a: c0's 1-1 TP; c2's 1-2 FP; c3's hidden 1-2 (0.3) FN; c3's 1-1 (0.8) is NOT a false
    alarm (its truth has X) but, with no true tag predicted, one TP; c1 likewise one TP.
    b: c0 TP, c2 (0.55) FP. TP 4, FP 2, FN 1: F1 = 8/11."""
    ds = dataset(Y, M, hidden={"c3": ["1-2"]})
    m = dcase_metrics(ds.test, S, taxonomy_of(ds))
    assert m["dcase_fine_micro_f1"] == pytest.approx(8 / 11)
    # Without the hidden positive c3 has X and nothing true: still one TP, and no FN.
    ds = dataset(Y, M)
    assert dcase_metrics(ds.test, S, taxonomy_of(ds))["dcase_fine_micro_f1"] == pytest.approx(0.8)


def test_x_rule_macro_auprc_by_hand():
    """Category a's points (recall, precision), thresholds 1.0 .9 .8 .7 .6 .4 .3 .2 .1:
    (0,0) (1/3,1) (.5,1) (.5,2/3) (.75,.75) (.75,.6) (1,.6) (1,.5) (1,.5), with (0,1) before
    and (1,0) after: trapezoids 1/6 + 1/6 + .25 (2/3 + .75)/2 + .25 (.6 + .6)/2.
    Category b: (0,0) (1,1) (1,.5) (1,1/3) (1,.25) -> 1/2, though its one positive ranks first."""
    ds = dataset(Y, M, hidden={"c3": ["1-2"]})
    a = 1 / 6 + 1 / 6 + 0.25 * (2 / 3 + 0.75) / 2 + 0.25 * 0.6
    m = dcase_metrics(ds.test, S, taxonomy_of(ds))
    assert m["dcase_fine_macro_auprc"] == pytest.approx((a + 0.5) / 2)


def test_coarse_level_by_hand():
    """Coarse classes: a: scores .9 .8 .3, truth 1 0 1 -> points (0,0) (.5,1) (.5,.5) (1,2/3):
    area .25 + .5 (.5 + 2/3)/2 = 13/24 (average precision would be 5/6: the trapezoid is lower).
    b: truth 0 1 0, scores .1 .95 .2 -> 1/2. Micro F1 at 0.8 (the first threshold >= 0.5):
    a TP 1 FP 1 FN 1, b TP 1 -> P = R = 2/3."""
    ds = dataset([[1, 0], [0, 1], [1, 0]], np.ones((3, 2)), classes=("1_a", "2_b"))
    s = np.array([[.9, .1], [.8, .95], [.3, .2]])
    m = dcase_metrics(ds.test, s, taxonomy_of(ds))
    assert m["dcase_coarse_macro_auprc"] == pytest.approx((13 / 24 + 0.5) / 2)
    assert m["dcase_coarse_micro_f1"] == pytest.approx(2 / 3)
    assert not any(k.startswith("dcase_fine") for k in m)


def test_fine_dataset_scores_coarse_from_the_max_of_its_fine_tags():
    """Coarse truth of a fine dataset: any fine tag or the X tag; coarse score: the fine max."""
    ds = dataset(Y, M, hidden={"c3": ["1-2"]})
    coarse = dataset([[1, 1], [1, 0], [0, 0], [1, 0]], np.ones((4, 2)), classes=("1_a", "2_b"))
    s = np.stack([S[:, :2].max(1), S[:, 2]], axis=1)
    got = dcase_metrics(ds.test, S, taxonomy_of(ds))
    want = dcase_metrics(coarse.test, s, taxonomy_of(coarse))
    assert {k: got[k] for k in want} == pytest.approx(want)


def reference(y, obs, inc, s, group, has_x, level):
    """The official evaluate()/micro/macro, threshold by threshold, as loops over categories."""
    per = []
    for g in range(len(has_x)):
        cols = np.flatnonzero(group == g)
        sg, yg, og = s[:, cols], y[:, cols] & obs[:, cols], obs[:, cols]
        ig = inc[:, g] if level == "fine" else np.zeros(len(s), bool)
        if level == "coarse":
            known = yg.any(1) | inc[:, g] | og.all(1)
            sg, yg = sg.max(1, keepdims=True), (yg.any(1) | inc[:, g])[:, None]
            og = known[:, None]
        thr = np.unique(np.r_[sg.ravel()[sg.ravel() >= 0.01], 1.0])[::-1]
        rows = []
        for t in thr:
            pred = sg >= t
            tp_c = pred & yg
            fp = (pred & ~yg & og & ~ig[:, None]).sum()
            fn = (~pred & yg).sum()
            tp = tp_c.sum() + (ig & pred.any(1) & ~tp_c.any(1)).sum()
            fn += (ig & ~yg.any(1) & ~pred.any(1)).sum()
            rows.append((t, tp, fp, fn))
        per.append(np.array(rows))

    def area(tp, fp, fn):
        p, r = tp / np.maximum(tp + fp, 0.5), tp / np.maximum(tp + fn, 0.5)
        o = np.argsort(r, kind="stable")
        return np.trapezoid(np.r_[1, p[o], 0], np.r_[0, r[o], 1])

    macro = np.mean([area(*c[:, 1:].T) for c in per])
    u = np.unique(np.concatenate([c[:, 0] for c in per]))
    tot = np.array([sum(c[c[:, 0] >= t][-1, 1:] for c in per) for t in u])
    tp, fp, fn = tot.T
    k = np.flatnonzero(u >= 0.5)[0]
    f1 = 2 * tp[k] / (2 * tp[k] + fp[k] + fn[k])
    return {f"dcase_{level}_micro_auprc": area(tp, fp, fn),
            f"dcase_{level}_macro_auprc": macro, f"dcase_{level}_micro_f1": f1}


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_per_threshold_reference_on_random_partial_truth(seed):
    rng = np.random.default_rng(seed)
    ds = synthesize("sonyc-like", seed=seed, n_clips=400)
    tax = taxonomy_of(ds)
    split = ds.test
    s = np.round(rng.random(split.Y.shape), 2 if seed % 2 else 6)  # ties when rounded
    cols = [np.flatnonzero(tax.group == g) for g in range(tax.G)]
    inc = tax.has_x & ~np.stack([split.M[:, c].any(1) for c in cols], 1)
    want = {}
    for level in ("fine", "coarse"):
        want |= reference(split.Y.astype(bool), split.M, inc, s, tax.group, tax.has_x, level)
    got = dcase_metrics(split, s, tax)
    assert inc.any() and not split.M.all()  # the case exercises X tags and missing cells
    assert got == pytest.approx(want, abs=1e-12)


def test_evaluate_adds_the_family_where_the_taxonomy_is_known():
    ds = synthesize("sonyc-like", seed=0, n_clips=300)
    scores = np.random.default_rng(0).random(ds.test.Y.shape)
    out = evaluate(ds.test, scores, "test", taxonomy_of(ds))
    names = {f"{p}/{n}" for p in ("test", "test_full") for n in NAMES}
    assert names <= set(out) and "test/auprc_macro" in out
    assert all(0 <= out[n] <= 1 for n in names)
    assert set(evaluate(ds.test, scores, "test")) == set(out) - names
    assert taxonomy_of(synthesize("openmic-like", seed=0, n_clips=100)) is None


def test_full_truth_has_no_x_and_scores_every_cell():
    """Against Y_full a perfect ranking of every category gives micro F1 1 at 0.5."""
    ds = synthesize("sonyc-like", seed=1, n_clips=300)
    perfect = np.where(ds.test.Y_full == 1, 0.9, 0.1)
    full = dcase_metrics(ds.test, perfect, taxonomy_of(ds), truth=ds.test.Y_full)
    assert full["dcase_fine_micro_f1"] == 1.0 and full["dcase_coarse_micro_f1"] == 1.0


def test_taxonomy_that_does_not_fit_the_classes_is_a_data_error():
    ds = dataset(Y, M, classes=("1-1_a1", "1-2_a2", "2-1_other"))
    with pytest.raises(DataError, match="meta.taxonomy: the classes are neither"):
        taxonomy_of(ds)
    ds = dataset(Y, M, hidden={"c3": ["9-9"]})
    with pytest.raises(DataError, match="dcase_hidden_positives: clip 'c3'"):
        taxonomy_of(ds)


def test_scores_outside_0_1_are_refused():
    ds = dataset(Y, M)
    with pytest.raises(DataError, match="scores: DCASE metrics need probabilities"):
        dcase_metrics(ds.test, S * 2, taxonomy_of(ds))


def test_ust_taxonomy_fits_the_sonyc_like_classes():
    tax = taxonomy_of(synthesize("sonyc-like", seed=0, n_clips=100))
    assert tax.level == "fine" and tax.G == 8 and tax.has_x.sum() == 6
    assert UST_TAXONOMY["fine"]["3"] == {"1": "non-machinery-impact"}
