"""Synthetic data: sizes, determinism, the observation process and the weak-label structure."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
from typer.testing import CliRunner

from tagtune.launch.cli import app
from tagtune.study.data import DataError, load
from tagtune.study.data.synth import (
    OPENMIC_CLASSES,
    SONYC_FINE_CLASSES,
    SynthConfig,
    draw_clips,
    resolve,
    synthesize,
)


@pytest.fixture(scope="module")
def openmic():
    return synthesize("openmic-like", seed=0, n_clips=300)


@pytest.fixture(scope="module")
def sonyc():
    return synthesize("sonyc-like", seed=0, n_clips=300)


def _index(keys: np.ndarray) -> np.ndarray:
    return np.array([int(k.rsplit("-", 1)[1]) for k in keys])


def test_openmic_like_shapes_sizes_and_metadata(openmic):
    ds = openmic
    assert ds.classes == OPENMIC_CLASSES and len(ds.classes) == 20
    assert sum(s.N for s in ds.splits.values()) == 300
    assert ds.test.N == round(300 * 5085 / 20000)
    for s in ds.splits.values():
        assert (s.T, s.F, s.C) == (10, 128, 20)
        assert s.X.dtype == np.float32 and s.Y.dtype == np.float32 and s.M.dtype == bool
        assert np.abs(s.X).max() < 2 and s.X.std() > 0.3  # documented (-2, 2) scale
    assert ds.name == "synth-openmic-like" and ds.source == "synth:openmic-like seed=0"
    assert ds.observation == "partial"
    assert {f.name for f in fields(SynthConfig)} <= set(ds.meta)
    assert ds.meta["seed"] == 0 and ds.meta["n_train"] == ds.train.N + ds.valid.N
    assert json.loads(json.dumps(ds.meta)) == ds.meta
    keys = np.concatenate([s.keys for s in ds.splits.values()])
    assert len(set(keys.tolist())) == 300


def test_valid_is_a_seeded_15_percent_of_the_pool(openmic):
    pool = openmic.train.N + openmic.valid.N
    assert openmic.valid.N == round(0.15 * pool)
    other = synthesize("openmic-like", seed=1, n_clips=300)
    assert not np.array_equal(openmic.valid.keys, other.valid.keys)  # drawn, not a fixed slice


def test_sonyc_like_has_its_own_valid_split_and_fine_tags(sonyc):
    assert sonyc.classes == SONYC_FINE_CLASSES and len(sonyc.classes) == 23
    assert "1-1_small-sounding-engine" in sonyc.classes
    assert (sonyc.train.T, sonyc.train.F) == (11, 512)
    total = 13538 + 4308 + 669
    assert sonyc.valid.N == round(4308 * 300 / total) and sonyc.test.N == round(669 * 300 / total)
    assert sonyc.train.N + sonyc.valid.N + sonyc.test.N == 300


def test_deterministic_in_seed(openmic):
    again = synthesize("openmic-like", seed=0, n_clips=300)
    other = synthesize("openmic-like", seed=1, n_clips=300)
    assert again.fingerprint == openmic.fingerprint
    for name, s in openmic.splits.items():
        t = again.split(name)
        assert np.array_equal(s.X, t.X) and np.array_equal(s.M, t.M)
        assert np.array_equal(s.Y_full, t.Y_full)
    assert not np.array_equal(openmic.test.X, other.test.X)
    assert not np.array_equal(openmic.test.Y_full, other.test.Y_full)


def test_observed_override_changes_only_the_mask(openmic):
    more = synthesize("openmic-like", seed=0, n_clips=300, observed=0.5)
    assert np.array_equal(more.train.X, openmic.train.X)
    assert np.array_equal(more.train.Y_full, openmic.train.Y_full)
    assert abs(more.train.M.mean() - 0.5) < 0.05 and more.meta["observed"] == 0.5


@pytest.mark.parametrize(("preset", "target"), [("openmic-like", 0.10), ("sonyc-like", 0.94)])
def test_observed_fraction_near_target_in_every_split(preset, target):
    ds = synthesize(preset, seed=3, n_clips=1000)
    for s in ds.splits.values():
        if s.N >= 100:
            assert abs(s.M.mean() - target) < 0.02, (preset, s.where, s.M.mean())


def test_openmic_like_observation_favours_positives():
    ds = synthesize("openmic-like", seed=0, n_clips=1000)
    for s in ds.splits.values():
        present = s.Y_full == 1
        assert s.M[present].mean() > 2 * s.M[~present].mean()
    tr = ds.train
    assert 0.35 < tr.Y[tr.M].mean() < 0.6  # OpenMIC-like share of positives among observed


def test_sonyc_like_missing_mostly_where_uncertain():
    ds = synthesize("sonyc-like", seed=0, n_clips=1000)
    tr = ds.train
    present = tr.Y_full == 1
    assert tr.M[~present].mean() > 0.9  # near-uniform: most negatives observed
    assert tr.M[present].mean() < tr.M[~present].mean()  # uncertainty where something sounds


def test_class_imbalance_and_co_occurrence():
    Y = np.concatenate([s.Y_full for s in synthesize("openmic-like", n_clips=2000).splits.values()])
    prior = Y.mean(axis=0)
    assert prior.min() > 0 and prior.max() / prior.min() > 8
    corr = np.corrcoef(Y.T)
    np.fill_diagonal(corr, 0)
    assert np.abs(corr).max() > 0.2
    rng = np.random.default_rng(0)  # independent columns with the same priors: no correlation
    null = np.corrcoef(np.stack([rng.permutation(y) for y in Y.T]))
    np.fill_diagonal(null, 0)
    assert np.abs(corr).max() > 2 * np.abs(null).max()


def test_labels_consistent_with_truth_where_observed(openmic, sonyc):
    for ds in (openmic, sonyc):
        for s in ds.splits.values():
            assert s.Y_full is not None and np.isin(s.Y_full, (0, 1)).all()
            assert np.array_equal(s.Y[s.M], s.Y_full[s.M])
            assert not s.Y[~s.M].any()
            assert (~s.M).any()  # partial everywhere, test included


def test_weak_labels_active_in_some_frames_only():
    cfg = resolve("openmic-like", n_clips=300)
    clips = draw_clips(cfg, seed=0)
    per_clip = clips.active.any(axis=1)
    assert np.array_equal(per_clip, clips.Y_full.astype(bool))  # >= 1 frame iff present
    n_active = clips.active.sum(axis=1)[clips.Y_full == 1]
    assert (n_active < cfg.n_frames).mean() > 0.3 and (n_active == cfg.n_frames).any()
    ds = synthesize("openmic-like", seed=0, n_clips=300)
    idx = _index(ds.train.keys)
    assert np.array_equal(ds.train.Y_full, clips.Y_full[idx])
    assert np.array_equal(ds.train.X, clips.X[idx])


def test_active_frames_carry_the_class_signal():
    clips = draw_clips(resolve("openmic-like", n_clips=1000), seed=0)
    X, c = clips.X, OPENMIC_CLASSES.index("guitar")
    on = clips.active[:, :, c]
    mixed = on.any(axis=1) & ~on.all(axis=1)  # present, but not in every frame
    frames, flags = X[mixed].reshape(-1, X.shape[-1]), on[mixed].reshape(-1)
    gap = np.linalg.norm(frames[flags].mean(0) - frames[~flags].mean(0))
    shuffled = np.random.default_rng(0).permutation(flags)
    null = np.linalg.norm(frames[shuffled].mean(0) - frames[~shuffled].mean(0))
    assert gap > 3 * null


def test_bad_input_raises_one_line_data_error():
    with pytest.raises(DataError, match="preset"):
        synthesize("nope")
    with pytest.raises(DataError, match="n_scene"):
        synthesize("openmic-like", n_clips=300, n_scene=3)
    with pytest.raises(DataError, match="observed"):
        synthesize("openmic-like", n_clips=300, observed=1.5)
    with pytest.raises(DataError, match="n_clips"):
        synthesize("openmic-like", n_clips=5)
    with pytest.raises(DataError, match="active_frames"):
        synthesize("openmic-like", n_clips=300, active_frames=(0.5, 0.2))


def test_cli_synth_then_describe(tmp_path):
    runner = CliRunner()
    out = tmp_path / "F.h5"
    r = runner.invoke(app, ["data", "synth", "--preset", "openmic-like", "--out", str(out),
                            "--n-clips", "300"])
    assert r.exit_code == 0, r.output
    ds = load(out)
    assert ds.fingerprint == synthesize("openmic-like", seed=0, n_clips=300).fingerprint
    r = runner.invoke(app, ["data", "describe", str(out)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for name, s in ds.splits.items():
        row = next(line for line in r.output.splitlines() if f" {name} " in line and "128" in line)
        assert all(f" {v} " in row for v in (s.N, s.T, s.F, s.C)), row
    for c in (0, 19):
        line = next(line for line in r.output.splitlines() if f" {ds.classes[c]} " in line)
        assert f"{ds.train.M[:, c].mean():.3f}" in line
        assert f" {int(ds.train.Y[:, c].sum())} " in line


def test_cli_unknown_preset_exits_2_with_one_line(tmp_path):
    r = CliRunner().invoke(app, ["data", "synth", "--preset", "nope", "--out",
                                 str(tmp_path / "F.h5")])
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "preset" in r.stderr
    assert not (tmp_path / "F.h5").exists()
