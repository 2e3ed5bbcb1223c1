"""A tiny end-to-end study on local Ray: budgets, MLflow runs, best configs."""

from __future__ import annotations

import json
from collections import Counter

from mlflow.tracking import MlflowClient
from ray import tune

from tests.conftest import TINY_STUDY

METHODS, MISSING, TRIALS = TINY_STUDY["methods"], TINY_STUDY["missing"], TINY_STUDY["trials"]


def test_every_cell_gets_exactly_its_budget(tiny_study):
    settings, result = tiny_study
    cells = result.summary["cells"]
    assert sorted(cells) == sorted(f"{m}@{p:.2f}" for m in METHODS for p in MISSING)
    assert all(c["trials"] == TRIALS and c["failed"] == 0 for c in cells.values())
    assert set(result.best) == set(cells)
    best = json.loads((result.study_dir / "best.json").read_text())
    for cell, b in best.items():
        assert b["config"]["cell"] == cell and b["config"]["method"] == cell.split("@")[0]


def test_mlflow_has_one_run_per_trial_and_replicate(tiny_study):
    settings, result = tiny_study
    client = MlflowClient(result.tracking_uri)
    everything = client.search_runs([result.experiment_id], max_results=1000)
    runs = [r for r in everything if "tagtune.trial_id" in r.data.tags]
    phases = Counter(r.data.tags["phase"] for r in runs)
    n_cells = len(METHODS) * len(MISSING)
    assert phases == {"search": n_cells * TRIALS, "replicate": n_cells * 2}
    assert len({r.data.tags["tagtune.trial_id"] for r in runs}) == len(runs)
    # One parent run per cell, named by it, holding its best config and replicates' results.
    parents = {r.info.run_name: r for r in everything if "tagtune.cell_run" in r.data.tags}
    assert len(everything) == len(runs) + n_cells and set(parents) == set(result.best)
    for cell, parent in parents.items():
        assert parent.info.status == "FINISHED"
        # the study's objective's best (val/best_loss for val/loss, tagtune.study.objective)
        assert parent.data.metrics[result.best[cell]["metric"]] == result.best[cell]["value"]
        assert parent.data.metrics["replicates"] == 2 and "test/f1_macro_sd" in parent.data.metrics
    own = {"b0": set(), "b1": set(), "le": {"gamma"}, "mt": {"alpha", "beta"}}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["cell"]].info.run_id
        assert r.info.run_name.startswith(r.data.tags["cell"] + (" seed " if r.data.tags["phase"] ==
                                                                "replicate" else " #"))
        for p in ("lr", "method", "missing", "model.layers", "seed"):
            assert p in r.data.params
        method = r.data.params["method"]
        assert {"gamma", "alpha", "beta"} & set(r.data.params) == own[method], method
        (inp,) = client.get_run(r.info.run_id).inputs.dataset_inputs
        assert inp.dataset.digest == result.summary["fingerprint"]
        assert "val/loss" in r.data.metrics and "epoch" in r.data.metrics
        if r.data.tags["phase"] == "replicate":
            assert "test/f1_macro" in r.data.metrics
    history = client.get_metric_history(runs[0].info.run_id, "val/loss")
    assert len(history) >= 1 and len({m.step for m in history}) == len(history)


def test_replicates_use_the_best_config_with_their_seeds(tiny_study):
    settings, result = tiny_study
    assert len(result.replicates) == len(result.best) * 2
    for row in result.replicates:
        assert row["error"] is None
        assert 0.0 <= row["test/f1_macro"] <= 1.0
    seeds = Counter((row["cell"], row["seed"]) for row in result.replicates)
    assert set(seeds.values()) == {1}
    # Each replicate trial ran its cell's best config from best.json, replicate r with seed + r.
    best = json.loads((result.study_dir / "best.json").read_text())
    trials = tune.ExperimentAnalysis(str(result.study_dir / "replicate")).trials
    assert len(trials) == len(best) * settings.replicates
    ran = Counter()
    for t in trials:
        cfg, r = t.config, t.config["replicate"]
        assert cfg["phase"] == "replicate" and cfg["seed"] == settings.seed + r
        searched = best[cfg["cell"]]["config"]
        own = ("phase", "replicate", "seed", "reused_checkpoint")
        assert {k: v for k, v in cfg.items() if k not in own} == {
            k: v for k, v in searched.items() if k not in ("phase", "seed")}, cfg["cell"]
        # By default replicate 0 (the search's seed) is the best trial's own final state.
        assert ("reused_checkpoint" in cfg) == (r == 0), cfg["cell"]
        ran[cfg["cell"], r] += 1
    assert ran == Counter({(cell, r): 1 for cell in best for r in range(settings.replicates)})
    # The summary's rows are those trials: same cells, same seeds.
    assert sorted((row["cell"], row["seed"]) for row in result.replicates) == sorted(
        (t.config["cell"], t.config["seed"]) for t in trials)


def test_the_counts_read_the_trials_tune_ended_as_its_last_snapshot_has_them(tiny_study):
    # After a phase the counts and the best trials read Tune's trials in memory, not a parse of
    # its last snapshot: the same trials, statuses, configs and last results.
    from tagtune.launch import counts
    from tagtune.launch.objective import metric

    settings, result = tiny_study
    key, _ = metric(settings)
    for phase in ("search", "replicate"):
        path = result.study_dir / phase
        remembered = counts.analysis(path)
        assert not isinstance(remembered, counts._Trials)  # Tune's own, not parsed again

        def seen(trials):
            return sorted((t.trial_id, t.status, t.config["cell"], t.config.get("seed"),
                           bool((t.last_result or {}).get("complete")),
                           (t.last_result or {}).get(key)) for t in trials)

        assert seen(remembered.trials) == seen(counts._Trials(str(path)).trials)
        assert len(remembered.trials) == len(tune.ExperimentAnalysis(str(path)).trials)
    assert {c: n["trials"] for c, n in counts.cell_counts(settings).items()} == \
        dict.fromkeys(result.summary["cells"], TRIALS)
