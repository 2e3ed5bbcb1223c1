"""What each figure shows, read back from its matplotlib objects: axis labels, one box per
(method, proportion), and the plotted values against the table they were drawn from."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import PathPatch

from tagtune.analysis import figures, stats
from tests.analysis.test_figures import METHODS, METRIC, PROPORTIONS, best_frame, fake_table


@pytest.fixture
def drawn(monkeypatch):
    """The figures as drawn, kept open instead of written (test_figures reads the PNGs)."""
    out = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: out.append(fig) or path)
    yield out
    for fig in out:
        plt.close(fig)


def _points(ax) -> list[np.ndarray]:
    return [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]


def test_replicate_boxes_one_box_per_method_and_proportion(drawn, tmp_path):
    reps = fake_table().query("phase == 'replicate'")
    reps = reps[~((reps.method == "b0") & (reps.proportion == 0.8))]  # a cell without replicates
    figures.replicate_boxes(reps, METRIC, tmp_path / "boxes.png")
    (fig,) = drawn
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [f"{100 * p:.0f}% of labels removed" for p in PROPORTIONS]
    assert axes[0].get_ylabel() == stats.metric_label(METRIC) == "F1 macro (test, observed labels)"
    for ax, p in zip(axes, PROPORTIONS, strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["B0", "B1", "LE", "MT"]
        present = [m for m in METHODS if not (m == "b0" and p == 0.8)]
        boxes = [b for b in ax.patches if isinstance(b, PathPatch)]
        assert len(boxes) == len(present)
        dots = _points(ax)
        assert len(dots) == len(present)
        for box, xy, m in zip(boxes, dots, present, strict=True):
            values = reps[(reps.method == m) & (reps.proportion == p)][METRIC].to_numpy()
            slot = METHODS.index(m)  # the method's own x slot, even when another is missing
            assert np.allclose(np.sort(xy[:, 1]), np.sort(values))
            assert np.all(np.abs(xy[:, 0] - slot) <= 0.12)
            y = box.get_path().vertices[:, 1]
            assert (y.min(), y.max()) == pytest.approx(tuple(np.percentile(values, [25, 75])))
            x = box.get_path().vertices[:, 0]
            assert x.min() < slot < x.max()
    assert "5 seeds per box" in fig._suptitle.get_text()


def test_sensitivity_plots_each_methods_means(drawn, tmp_path):
    reps = fake_table().query("phase == 'replicate'")
    summary = stats.summary_table(reps, METRIC)
    figures.sensitivity(summary, METRIC, tmp_path / "sens.png")
    (ax,) = drawn[0].axes
    assert ax.get_xlabel() == figures.MISSING_AXIS and ax.get_ylabel() == stats.metric_label(METRIC)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["B0", "B1", "LE", "MT"]
    lines = ax.get_lines()
    assert len(lines) == len(METHODS)
    for line, m in zip(lines, METHODS, strict=True):
        means = reps[reps.method == m].groupby("proportion")[METRIC].mean()
        assert np.allclose(line.get_xdata(), 100 * means.index.to_numpy())
        assert np.allclose(line.get_ydata(), means.to_numpy())
    # B0 falls fastest in the fake data: the figure shows it lowest at 80%.
    at_80 = {m: line.get_ydata()[-1] for line, m in zip(lines, METHODS, strict=True)}
    assert min(at_80, key=at_80.get) == "b0"


def test_best_hparams_draws_every_finished_trial_and_the_best(drawn, tmp_path):
    table = fake_table()
    search, best = table[table.phase == "search"], best_frame(table)
    figures.best_hparams(search, best, tmp_path / "hp.png")
    axes = drawn[0].axes
    assert [ax.get_ylabel() for ax in axes] == [p[2] for p in figures.HPARAM_PANELS]
    assert all(ax.get_xlabel() == figures.MISSING_AXIS for ax in axes)
    assert axes[0].get_ylim() == (0, 100) and axes[1].get_yscale() == "log"
    for ax, (method, col, *_) in zip(axes, figures.HPARAM_PANELS, strict=True):
        done = search[(search.method == method) & (search.status == "complete")]
        expected = 1 - done["alpha"] if col == "one_minus_alpha" else done[col]
        ((xy),) = _points(ax)
        assert np.allclose(np.sort(xy[:, 1]), np.sort(expected.to_numpy()))
        b = best[best.method == method].sort_values("proportion")
        (line,) = ax.get_lines()
        want = 1 - b["alpha"] if col == "one_minus_alpha" else b[col]
        assert np.allclose(line.get_xdata(), 100 * b["proportion"].to_numpy())
        assert np.allclose(line.get_ydata(), want.to_numpy())


def test_history_is_the_running_best_of_finished_trials(drawn, tmp_path):
    search = fake_table().query("phase == 'search'")
    figures.history(search, tmp_path / "hist.png")
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == ["B0", "B1", "LE", "MT"]
    assert axes[0].get_ylabel() == figures.SELECTION_AXIS
    for ax, m in zip(axes, METHODS, strict=True):
        lines = ax.get_lines()
        assert len(lines) == len(PROPORTIONS)
        for line, p in zip(lines, PROPORTIONS, strict=True):
            t = search[(search.method == m) & (search.proportion == p)].sort_values("trial_number")
            losses = t["val/best_loss"].where(t.status == "complete").to_numpy()
            running = [np.nanmin(losses[: i + 1]) if np.isfinite(losses[: i + 1]).any() else np.nan
                       for i in range(len(losses))]
            assert np.allclose(line.get_ydata(), running, equal_nan=True)
            assert line.get_ydata()[-1] == pytest.approx(np.nanmin(losses))


def test_newer_methods_settings_reach_the_best_table_and_their_panels(drawn, tmp_path):
    """The best frame the pipeline builds carries each method's own settings (LL-R's delta_rel,
    SPLC's tau), so their panels are drawn and the report's best-config table shows them."""
    from tagtune.analysis.pipeline import _best_frame
    from tagtune.analysis.report import _best_table

    best = {f"{m}@{p:.2f}": {"config": {"method": m, "missing": p, **extra}, "value": 0.3 + p,
                             "trial_id": f"t{i}"}
            for i, (m, extra) in enumerate([("llr", {"delta_rel": 0.004}), ("splc", {"splc_tau": 0.7}),
                                            ("b1", {})])
            for p in (0.2, 0.4)}
    frame = _best_frame(best)
    assert frame.loc[frame.method == "llr", "delta_rel"].tolist() == [0.004, 0.004]
    assert frame.loc[frame.method == "splc", "splc_tau"].tolist() == [0.7, 0.7]
    assert frame.loc[frame.method == "b1", ["delta_rel", "splc_tau", "gamma"]].isna().all().all()
    shown = list(_best_table(frame).columns)
    assert {"delta_rel", "splc_tau", "margin"} <= set(shown) and "gamma" not in shown

    rng = np.random.default_rng(0)
    search = frame.assign(status="complete", alpha=np.nan,
                          delta_rel=lambda f: f.delta_rel * rng.uniform(0.5, 2, len(f)))
    figures.best_hparams(search, frame, tmp_path / "hp.png")
    axes = drawn[0].axes
    assert [ax.get_ylabel() for ax in axes] == ["LL-R delta_rel (log scale)", "SPLC tau"]
    assert axes[0].get_yscale() == "log"
    (line,) = axes[1].get_lines()
    assert np.allclose(line.get_ydata(), [0.7, 0.7])
