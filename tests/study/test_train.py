"""The fit loop: logs, stages, selection, determinism, checkpoint/resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tagtune.study.config import METHODS, ConfigError, ModelConfig, TrainConfig, replace
from tagtune.study.data import Dataset, positives_only
from tagtune.study.fit.train import FitResult, evaluate_fit, fit, lr_at
from tests.conftest import TINY_CONFIG, make_split

BASE_KEYS = ["epoch", "stage", "lr", "precision", "train/loss", "val/loss", "val/f1_macro", "val/auprc_micro",
             "val/auprc_macro", "val_full/f1_macro", "val_full/auprc_micro",
             "val_full/auprc_macro", "val_full/map", "val/f1_macro_tuned", "val_full/f1_macro_tuned"]


def _cfg(method: str, **kw) -> TrainConfig:
    return replace(TINY_CONFIG, method=method, **kw)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same_history(a: list[dict], b: list[dict]) -> bool:
    """Equal, with nan == nan (a metric with no observed positive is nan)."""
    def norm(h):
        return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}
                for d in h]
    return norm(a) == norm(b)


@pytest.mark.parametrize("method", METHODS)
def test_logs_have_the_same_keys_for_every_method(tiny_dataset, method):
    r = fit(tiny_dataset, _cfg(method))
    student = [k + "_student" for k in BASE_KEYS if k.startswith("val")]  # MT's other network
    mean_teacher = ["train/consistency", *student]
    # the extra keys of the student stage (LE's, LE+MT's) or of the only one; then of LE's teacher stage
    extra = {"b0": [], "b1": [], "le": ["le/masked_fraction"], "mt": mean_teacher,
             "lemt": ["le/masked_fraction", *mean_teacher], "llr": ["train/rejected_share"],
             "hill": [], "splc": ["train/relabelled_share"], "pbce": [], "wan": [],
             "epr": ["train/epr_regulariser"]}[method]
    teacher_extra = {"lemt": mean_teacher}.get(method, [])
    for logs in r.history:
        expected = BASE_KEYS + (teacher_extra if logs["stage"] == "teacher" else extra)
        assert set(logs) == set(expected)
        assert all(np.isfinite(logs[k]) for k in ("train/loss", "val/loss"))
    assert [h["epoch"] for h in r.history] == list(range(1, len(r.history) + 1))
    stages = [h["stage"] for h in r.history]
    two = method in ("le", "lemt")
    assert stages == (["teacher"] * 2 + ["student"] * 2 if two else ["main"] * 2)
    if method == "le":
        assert "le/masked_fraction" not in r.history[0]
        assert 0.8 < r.history[-1]["le/masked_fraction"] < 1.0  # gamma 10: ~90% masked
    if method == "mt":
        assert all(h["train/consistency"] > 0 for h in r.history)


def test_selection_by_validation_loss_and_evaluate_fit(tiny_dataset):
    r = fit(tiny_dataset, _cfg("b1", epochs=4, lr=0.05))
    losses = [h["val/loss"] for h in r.history]
    assert r.best is r.history[int(np.argmin(losses))]
    out = evaluate_fit(r, tiny_dataset)
    assert out["val/loss"] == pytest.approx(r.best["val/loss"], rel=1e-6)  # the selected model
    assert out["val/f1_macro"] == pytest.approx(r.best["val/f1_macro"])
    assert {"test/loss", "test/f1_macro", "test/auprc_micro", "test_full/map"} <= set(out)
    assert r.predict(tiny_dataset.test.X).shape == (12, 3) and not r.model.training


@pytest.mark.parametrize(("select", "other"), [("teacher", "student"), ("student", "teacher")])
def test_mt_selects_the_configured_network_and_logs_the_other(tiny_dataset, select, other):
    r = fit(tiny_dataset, _cfg("mt", alpha=0.5, epochs=3, mt_select=select))
    losses = [h["val/loss"] for h in r.history]  # the selected network's own validation loss
    assert r.best is r.history[int(np.argmin(losses))]
    out = evaluate_fit(r, tiny_dataset)
    assert out["val/loss"] == pytest.approx(r.best["val/loss"], rel=1e-6)
    assert r.other is not None and not _same_weights(r.model, r.other)
    as_selected = FitResult(r.history, r.best, model=r.other, cfg=r.cfg)
    other_out = evaluate_fit(as_selected, tiny_dataset)
    assert other_out["val/loss"] == pytest.approx(r.best[f"val/loss_{other}"], rel=1e-6)
    for split in ("val", "test"):  # both networks' metrics, the other's under its suffix
        assert out[f"{split}/f1_macro_{other}"] == pytest.approx(other_out[f"{split}/f1_macro"])
        assert out[f"{split}/loss_{other}"] == pytest.approx(other_out[f"{split}/loss"])
    assert not any(k.endswith(f"_{select}") for k in out)


def test_lr_step_decay_and_le_student_restarts_at_the_initial_lr(tiny_dataset):
    assert [lr_at(replace(TINY_CONFIG, lr_decay_epochs=(1, 2), lr_decay=0.5), e) for e in (1, 2, 3)] \
        == [TINY_CONFIG.lr, TINY_CONFIG.lr / 2, TINY_CONFIG.lr / 4]
    r = fit(tiny_dataset, _cfg("le", epochs=3, lr_decay_epochs=(1,), lr_decay=0.1))
    assert [h["lr"] for h in r.history] == pytest.approx([3e-3, 3e-4, 3e-4, 3e-3, 3e-4, 3e-4])


def test_patience_stops_a_stage(tiny_dataset):
    r = fit(tiny_dataset, _cfg("le", epochs=30, lr=0.05, patience=2))
    for stage in ("teacher", "student"):
        h = [x for x in r.history if x["stage"] == stage]
        assert 2 < len(h) < 30
        best = min(range(len(h)), key=lambda i: h[i]["val/loss"])
        assert len(h) == best + 3  # stopped after 2 epochs without improvement
    assert r.history[-1]["epoch"] < 60 and \
        [x["epoch"] for x in r.history if x["stage"] == "student"][0] == 31


def test_runs_are_reproducible_from_the_config(tiny_dataset):
    for method in ("b1", "mt"):
        a, b = fit(tiny_dataset, _cfg(method)), fit(tiny_dataset, _cfg(method))
        c = fit(tiny_dataset, _cfg(method, seed=1))
        assert _same_weights(a.model, b.model) and _same_history(a.history, b.history)
        assert not _same_weights(a.model, c.model)


def test_le_stage_one_is_b0_and_a_given_teacher_gives_the_same_student(tiny_dataset):
    b0 = fit(tiny_dataset, _cfg("b0"))
    full = fit(tiny_dataset, _cfg("le"))
    assert _same_weights(full.le_teacher, b0.model)
    assert _same_history(full.history[:2], [{**h, "stage": "teacher"} for h in b0.history])
    for teacher in (b0.model, b0.model.state_dict()):
        given = fit(tiny_dataset, _cfg("le"), le_teacher=teacher)
        assert _same_weights(given.model, full.model)
        assert _same_history(given.history, full.history[2:])  # epochs 3, 4: one counter
    with pytest.raises(ConfigError, match="le_teacher"):
        fit(tiny_dataset, _cfg("le", model=ModelConfig(layers=1, hidden=4)), le_teacher=b0.model)
    with pytest.raises(ConfigError, match="le_teacher"):
        fit(tiny_dataset, _cfg("b1"), le_teacher=b0.model)


def test_missing_labels_are_removed_before_training(tiny_dataset):
    """More missing labels, more for LE to mask; the removal is seeded."""
    a = fit(tiny_dataset, _cfg("le", epochs=1, gamma=50.0))
    b = fit(tiny_dataset, _cfg("le", epochs=1, gamma=50.0, missing=0.6))
    assert a.history[-1]["le/masked_fraction"] != b.history[-1]["le/masked_fraction"]
    assert a.history[0]["train/loss"] != b.history[0]["train/loss"]


def test_positives_only_refuses_the_methods_that_need_negatives(tiny_dataset):
    ds = positives_only(tiny_dataset)
    assert fit(ds, _cfg("le", epochs=1)).history[-1]["stage"] == "student"
    for method in ("b1", "mt", "pbce"):
        with pytest.raises(ConfigError, match="positives-only"):
            fit(ds, _cfg(method))


def test_t1_and_a_lone_last_clip(tiny_dataset):
    rng = np.random.default_rng(1)
    ds = Dataset(make_split(rng, 17, T=1), make_split(rng, 5, T=1, prefix="v"),
                 make_split(rng, 5, T=1, prefix="t"), classes=("a", "b", "c"))
    r = fit(ds, _cfg("mt", batch_size=8))  # 17 = 8 + 8 + 1: the lone clip waits
    assert r.predict(ds.test.X[:, 0]).shape == (5, 3)


@pytest.mark.parametrize(("method", "at"), [("b0", 2), ("b1", 1), ("mt", 2), ("le", 2),
                                            ("le", 3), ("lemt", 2), ("lemt", 3), ("llr", 2),
                                            ("hill", 2), ("splc", 1), ("pbce", 2), ("wan", 2),
                                            ("epr", 2)])
def test_resume_continues_exactly(tiny_dataset, tmp_path, method, at):
    """Train 4 epochs == train, save at epoch ``at``, resume, train the rest (LE, LE+MT: 2 + 2
    epochs, saved at the stage boundary and inside the student stage)."""
    # alpha 0.9: MT's EMA warm-up (steps 1-8 here) straddles the save, so a lost step count shows.
    # LL-R's rate and SPLC's relabelling depend on the epochs done: a resumed run that lost
    # them would reject (relabel) differently from the save on (delta_rel 0.1, tau 0.3: some do).
    two = method in ("le", "lemt")
    cfg = _cfg(method, epochs=2 if two else 4, lr_decay_epochs=(1, 3), alpha=0.9,
               patience=3, rampup_epochs=2 if method in ("mt", "lemt") else 0, delta_rel=0.1,
               splc_tau=0.3)

    def on_epoch(logs, save):
        if logs["epoch"] == at:
            save(tmp_path)

    whole = fit(tiny_dataset, cfg, on_epoch=on_epoch)
    seen = []
    resumed = fit(tiny_dataset, cfg, resume=tmp_path, on_epoch=lambda logs, _: seen.append(logs))
    assert [h["epoch"] for h in seen] == list(range(at + 1, 5))
    assert _same_history(resumed.history, whole.history)
    assert _same_history([resumed.best], [whole.best])
    assert _same_weights(resumed.model, whole.model)
    if method in ("mt", "lemt"):
        assert _same_weights(resumed.other, whole.other)
    if two:
        assert _same_weights(resumed.le_teacher, whole.le_teacher)


def test_resume_reads_a_state_from_before_the_methods_own_state(tiny_dataset, tmp_path):
    """A state written when LE's teacher and masked fraction were fields of the fit state (no
    ``method``/``method_logs``) resumes as the state written now does."""
    cfg = _cfg("le", epochs=2)

    def on_epoch(logs, save):
        if logs["epoch"] == 3:
            save(tmp_path)

    whole = fit(tiny_dataset, cfg, on_epoch=on_epoch)
    path = tmp_path / "state.pt"
    payload = torch.load(path, weights_only=True)
    payload["le_teacher"] = payload.pop("method")["le_teacher"]
    payload["masked_fraction"] = payload.pop("method_logs")["le/masked_fraction"]
    torch.save(payload, path)
    resumed = fit(tiny_dataset, cfg, resume=tmp_path)
    assert _same_history(resumed.history, whole.history)
    assert _same_weights(resumed.model, whole.model)
    assert _same_weights(resumed.le_teacher, whole.le_teacher)


def test_resume_refuses_another_config(tiny_dataset, tmp_path):
    fit(tiny_dataset, _cfg("b1"), on_epoch=lambda logs, save: save(tmp_path))
    with pytest.raises(ConfigError, match="different config.*lr"):
        fit(tiny_dataset, _cfg("b1", lr=0.1), resume=tmp_path)
    with pytest.raises(ConfigError, match="no state.pt"):
        fit(tiny_dataset, _cfg("b1"), resume=tmp_path / "nowhere")
    done = fit(tiny_dataset, _cfg("b1", threads=2), resume=tmp_path)  # threads may differ
    assert len(done.history) == 2


def test_le_teacher_lr_sets_stage_one_only(tiny_dataset):
    # A study fixes the teacher's lr so that trials searching the student's lr share one
    # teacher; the same YAML run by `tagtune train` must then train that same teacher.
    le = fit(tiny_dataset, _cfg("le", lr=1e-2, le_teacher_lr=3e-3))
    b0 = fit(tiny_dataset, _cfg("b0", lr=3e-3))
    assert _same_weights(le.le_teacher, b0.model)
    lrs = {(h["stage"], h["lr"]) for h in le.history}
    assert lrs == {("teacher", 3e-3), ("student", 1e-2)}
    with pytest.raises(ConfigError, match="le_teacher_lr"):
        _cfg("le", le_teacher_lr=0.0)
