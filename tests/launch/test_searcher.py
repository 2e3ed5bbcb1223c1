"""CellSearcher: budgets, round robin, what Optuna is told, resume; one run with real Ray Tune."""

from __future__ import annotations

import math
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from tagtune.launch.searcher import Cell, CellSearcher
from tagtune.search_spaces import Ranges
from tagtune.study.config import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
FINISHED = CellSearcher.FINISHED
CELLS = [Cell("b1", 0.0), Cell("le", 0.2), Cell("mt", 0.4)]


def searcher(budget: int = 3, cells=CELLS, **kw) -> CellSearcher:
    return CellSearcher(cells, budget, **kw)


def report(s: CellSearcher, tid: str, losses: list[float], complete: bool, stopped: bool = False):
    """Feed per-epoch results like Tune does: a stopped trial's last result only arrives
    with on_trial_complete, never through on_trial_result."""
    results = [{"val/loss": v, "training_iteration": i + 1,
                "complete": complete and i == len(losses) - 1} for i, v in enumerate(losses)]
    for r in results[:-1] if stopped else results:
        s.on_trial_result(tid, r)
    s.on_trial_complete(tid, results[-1])


def study(s: CellSearcher, tmp_path, cell_id: str) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s.export(url)
    return optuna.load_study(study_name=cell_id, storage=url)


def test_cell_ids_are_stable_and_parse_back():
    assert Cell("mt", 0.4).id == "mt@0.40" and Cell("b0", 0.0).id == "b0@0.00"
    assert Cell.parse("le@0.25") == Cell("le", 0.25)
    with pytest.raises(ConfigError, match="cell.method"):
        Cell("mean_teacher", 0.1)
    with pytest.raises(ConfigError, match="cell.missing"):
        Cell("mt", 1.0)
    with pytest.raises(ConfigError, match="distinct"):
        CellSearcher([Cell("mt", 0.4), Cell("mt", 0.401)], 2)
    with pytest.raises(ConfigError, match="base_config.cell"):
        CellSearcher(CELLS, 2, base_config={"cell": "x"})


@pytest.mark.parametrize("budget", [1, 2, 3])
def test_round_robin_exact_budget_then_finished(budget):
    s = searcher(budget=budget)
    # The enqueued paper point is not a trial until it is handed out.
    assert {v["handed_out"] for v in s.summary().values()} == {0}
    configs = [s.suggest(f"t{i}") for i in range(3 * budget)]
    assert [c["cell"] for c in configs] == ["b1@0.00", "le@0.20", "mt@0.40"] * budget
    assert [s.suggest(f"x{i}") for i in range(3)] == [FINISHED] * 3
    assert {cid: v["handed_out"] for cid, v in s.summary().items()} == dict.fromkeys(
        ["b1@0.00", "le@0.20", "mt@0.40"], budget)


def test_round_robin_skips_cells_whose_budget_is_spent():
    s = searcher(budget=3, cells=[Cell("b0", 0.0), Cell("b1", 0.0)])
    order = [s.suggest(f"t{i}")["cell"] for i in range(6)]
    assert Counter(order) == {"b0@0.00": 3, "b1@0.00": 3}
    assert s.suggest("t6") == FINISHED


def test_unequal_budgets_cells_that_finish_early_are_skipped():
    """A cell whose budget is spent is passed over, wherever the round robin stands."""
    budgets = {"b0@0.00": 1, "b1@0.00": 3, "mt@0.40": 2}
    s = searcher(budget=budgets, cells=[Cell("b0", 0.0), Cell("b1", 0.0), Cell("mt", 0.4)])
    first = [s.suggest(f"t{i}") for i in range(3)]
    assert [c["cell"] for c in first] == list(budgets)
    report(s, "t0", [0.4, 0.3], complete=True)  # b0's only trial is over: b0 is done
    rest = [s.suggest(f"u{i}") for i in range(3)]
    assert [c["cell"] for c in rest] == ["b1@0.00", "mt@0.40", "b1@0.00"]
    assert [s.suggest(f"x{i}") for i in range(3)] == [FINISHED] * 3
    assert {cid: v["handed_out"] for cid, v in s.summary().items()} == budgets
    with pytest.raises(ConfigError, match="trials_per_cell"):
        searcher(budget={"b1@0.00": 2, "le@0.20": 2})  # mt@0.40 has none
    with pytest.raises(ConfigError, match="trials_per_cell"):
        searcher(budget={"b1@0.00": 2, "le@0.20": 0, "mt@0.40": 1})


def test_fused_trials_are_dealt_a_cell_block_at_a_time_each_config_its_own():
    # fuse 3: a cell's trials come 3 in a row (one stack), TPE asked 3 times with the constant liar;
    # a cell whose budget runs out mid-block hands over to the next; budgets stay exact.
    s = CellSearcher(CELLS, {"b1@0.00": 5, "le@0.20": 2, "mt@0.40": 4}, block=3, n_startup_trials=1)
    dealt = [s.suggest(f"t{i}") for i in range(11)]
    assert [c["cell"] for c in dealt] == ["b1@0.00"] * 3 + ["le@0.20"] * 2 + ["mt@0.40"] * 3 + [
        "b1@0.00"] * 2 + ["mt@0.40"]
    assert s.suggest("t11") == FINISHED
    block = [c["lr"] for c in dealt[:3]]
    assert len(set(block)) == 3  # the paper point, then two others: no config handed out twice


def test_first_trial_of_every_cell_is_the_paper_point_and_configs_are_complete():
    s = searcher(budget=2, preset="sonyc", base_config={"epochs": 7, "gamma": 50.0})
    first = [s.suggest(f"t{i}") for i in range(3)]
    assert first[0] == {"epochs": 7, "gamma": 50.0, "method": "b1", "missing": 0.0,
                        "cell": "b1@0.00", "optuna_trial": 0, "lr": 1e-3}
    assert first[1] == {"epochs": 7, "gamma": 95.0, "method": "le", "missing": 0.2,
                        "cell": "le@0.20", "optuna_trial": 0, "lr": 1e-3}  # searched gamma wins
    assert first[2] == {"epochs": 7, "gamma": 50.0, "method": "mt", "missing": 0.4,
                        "cell": "mt@0.40", "optuna_trial": 0, "lr": 1e-3, "alpha": 0.99, "beta": 3.0}
    second = [s.suggest(f"u{i}") for i in range(3)]
    assert all(b["lr"] != 1e-3 for b in second)
    # The number optuna-dashboard shows for the cell's study (the MLflow run is named by it).
    assert [b["optuna_trial"] for b in second] == [1, 1, 1]


def test_complete_pruned_and_failed_trials_are_told_as_such(tmp_path):
    s = searcher(budget=5, cells=[Cell("mt", 0.4)], ranges=Ranges(beta=(0, 5)))
    for i in range(5):
        s.suggest(f"t{i}")
    report(s, "t0", [0.5, 0.3, 0.4], complete=True)  # best epoch, not the last
    report(s, "t1", [0.6, 0.2], complete=False, stopped=True)  # ASHA stop at epoch 2
    report(s, "t2", [0.4, 0.1], complete=False)
    s.on_trial_complete("t2", error=True)  # told once only: a second call is ignored
    s.on_trial_result("t3", {"val/loss": 0.7, "training_iteration": 1})
    s.on_trial_complete("t3", error=True)
    report(s, "t4", [math.nan, math.nan], complete=True)  # no usable value
    trials = study(s, tmp_path, "mt@0.40").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL]
    assert trials[0].value == 0.3 and trials[0].intermediate_values == {1: 0.5, 2: 0.3, 3: 0.4}
    # The stopped trial's last result reached Optuna although it skipped on_trial_result.
    assert trials[1].intermediate_values == {1: 0.6, 2: 0.2} and trials[1].value == 0.2
    assert trials[4].intermediate_values == {}
    summary = s.summary()["mt@0.40"]
    assert (summary["completed"], summary["pruned"], summary["failed"]) == (1, 2, 2)
    # A pruned trial's lower loss (0.2, 0.1) never makes it the best: smaller budget.
    assert summary["best_value"] == 0.3 and summary["best_trial_id"] == "t0"
    assert summary["best_params"] == {"lr": 1e-3, "alpha": 0.999, "beta": 3.0}


def test_best_per_cell_follows_the_mode():
    s = searcher(budget=2, cells=[Cell("b0", 0.0), Cell("b1", 0.0)], metric="val/loss",
                 mode="max", base_config={"epochs": 3})
    ids = [f"t{i}" for i in range(4)]
    configs = dict(zip(ids, [s.suggest(t) for t in ids], strict=True))
    for tid, loss in zip(ids, [0.2, 0.5, 0.9, 0.1], strict=True):
        report(s, tid, [loss], complete=True)
    summary = s.summary()
    assert summary["b0@0.00"]["best_value"] == 0.9 and summary["b1@0.00"]["best_value"] == 0.5
    assert s.best_config(Cell("b0", 0.0)) == configs["t2"]
    assert s.best_config("b1@0.00") == configs["t1"]


def test_metric_and_mode_come_from_tune_once():
    s = searcher()
    assert s.set_search_properties("val/best_loss", "min", {}) is False  # space is ours
    assert (s.metric, s.mode) == ("val/best_loss", "min")
    assert s.set_search_properties("val/best_loss", "min", {}) is False  # again, on resume
    with pytest.raises(ValueError, match="set it once"):
        s.set_search_properties("val/loss", "min", {})
    with pytest.raises(ValueError, match="mode"):
        searcher(metric="val/loss", mode="min").set_search_properties(None, "max", {})
    lone = searcher()  # without Tune: the defaults
    lone.suggest("t0")
    assert (lone.metric, lone.mode) == ("val/loss", "min")


def _drive(s: CellSearcher, start: int, stop: int) -> list:
    """Suggest trial ids start..stop-1, finishing every other one (completed or pruned)."""
    out = []
    for i in range(start, stop):
        config = s.suggest(f"t{i}")
        out.append(config)
        if config != FINISHED and i % 2 == 0:
            loss = abs(math.log10(config["lr"]) + 3) + 0.1 * i
            report(s, f"t{i}", [loss + 1, loss], complete=i % 4 == 0, stopped=i % 4 != 0)
    return out


def test_save_restore_mid_search_continues_exactly(tmp_path):
    whole = _drive(searcher(budget=4, seed=7), 0, 14)
    assert whole[12:] == [FINISHED, FINISHED]

    first = searcher(budget=4, seed=7)
    head = _drive(first, 0, 5)
    first.save(str(tmp_path / "searcher.pkl"))
    # Restored into a searcher built differently: the checkpoint is the truth.
    resumed = CellSearcher([Cell("b0", 0.0)], 1, seed=123)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert {k: v["handed_out"] for k, v in resumed.summary().items()} == {
        "b1@0.00": 2, "le@0.20": 2, "mt@0.40": 1}
    tail = _drive(resumed, 5, 14)
    # Same suggestions as without the interruption: the samplers' states came back too.
    assert head + tail == whole
    suggested = [c for c in tail if c != FINISHED]
    # 12 trials, 3 of them paper points: OpenMIC's B1 at 5e-4, LE and MT at 1e-3.
    assert len(suggested) == 7 and len({c["lr"] for c in head + suggested}) == 11
    assert all(v["handed_out"] == 4 for v in resumed.summary().values())
    # Trials handed out before the save are still known: their end reaches Optuna.
    report(resumed, "t1", [0.05], complete=True)
    summary = resumed.summary()["le@0.20"]
    assert summary["best_trial_id"] == "t1" and summary["best_value"] == 0.05


def test_export_writes_one_study_per_cell_and_replaces_an_earlier_export(tmp_path):
    s = searcher(budget=2)
    s.suggest("t0")
    report(s, "t0", [0.4, 0.3], complete=True)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert s.export(url) == ["b1@0.00", "le@0.20", "mt@0.40"]
    s.suggest("t1")
    s.export(url)
    names = sorted(optuna.get_all_study_names(storage=url))
    assert names == ["b1@0.00", "le@0.20", "mt@0.40"]
    b1 = optuna.load_study(study_name="b1@0.00", storage=url)
    assert b1.best_value == 0.3 and b1.best_trial.user_attrs["paper_point"] is True
    assert len(optuna.load_study(study_name="le@0.20", storage=url).trials) == 1


def test_seed_makes_the_search_repeatable():
    def lrs(seed):
        s = searcher(budget=3, seed=seed)
        return [s.suggest(f"t{i}")["lr"] for i in range(9)]

    assert lrs(1) == lrs(1)
    assert lrs(1)[3:] != lrs(2)[3:] and lrs(1)[:3] == lrs(2)[:3] == [5e-4, 1e-3, 1e-3]


def test_ray_tune_gives_every_cell_exactly_its_budget(ray_session, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    max_t = 4

    def trainable(config):
        for it in range(1, max_t + 1):  # best near lr = 1e-3, better with every epoch
            loss = abs(math.log10(config["lr"]) + 3) + 1.0 / it
            tune.report({"val/loss": loss, "complete": it == max_t})

    cells = [Cell("b1", 0.0), Cell("mt", 0.4)]
    s = CellSearcher(cells, trials_per_cell=3, seed=0)  # metric, mode: from TuneConfig only
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric="val/loss", mode="min", search_alg=s, num_samples=-1, reuse_actors=True,
            scheduler=ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="cells", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    assert Counter(r.config["cell"] for r in results) == {"b1@0.00": 3, "mt@0.40": 3}
    # The searcher's saved state, read back as a resume would.
    saved = CellSearcher(cells, trials_per_cell=1)
    saved.restore_from_dir(str(tmp_path / "cells"))
    summary = saved.summary()
    assert summary == s.summary()  # Tune used this very object
    # The paper points lead at ASHA's first rung, so later, worse trials get cut there.
    assert sum(c["pruned"] for c in summary.values()) >= 1
    for cid in ("b1@0.00", "mt@0.40"):
        ours = [r for r in results if r.config["cell"] == cid]
        done = [r for r in ours if r.metrics["complete"]]
        cell = summary[cid]
        assert cell["handed_out"] == 3 and cell["running"] == cell["failed"] == 0
        assert (cell["completed"], cell["pruned"]) == (len(done), 3 - len(done))
        paper_lr = 5e-4 if cid.startswith("b1") else 1e-3  # the OpenMIC scripts' lr
        assert any(r.config["lr"] == paper_lr for r in ours)  # the paper point ran
        assert cell["best_value"] == pytest.approx(min(r.metrics["val/loss"] for r in done))
