"""``reuse_best_replicate``: the search's best trial stands in for the replicate of its seed --
the same results as training it again, one MLflow replicate run for it, nothing trained."""

from __future__ import annotations

from collections import Counter

from mlflow import MlflowClient
from ray import tune

from tagtune.launch.study import run_study
from tagtune.launch.trainable import TRIAL_STATE
from tagtune.study import data
from tagtune.study.folder import StudySettings
from tests.conftest import TINY_TRAIN

EPOCHS = 2


def _study(root, path, name: str, reuse: bool):
    settings = StudySettings(data=str(path), name=name, storage=str(root), methods=("b1", "le"),
                             missing=(0.4,), trials=1, replicates=2, epochs=EPOCHS, grace_period=1,
                             reuse_best_replicate=reuse, train=TINY_TRAIN)
    return settings, run_study(settings, verbose=0)


def test_the_best_trial_stands_in_for_its_seeds_replicate(tmp_path, ray_session, tiny_dataset):
    path = data.save(tiny_dataset, tmp_path / "tiny.h5")
    _, plain = _study(tmp_path, path, "plain", reuse=False)
    settings, reused = _study(tmp_path, path, "reused", reuse=True)

    # The science is the same: every replicate's test metrics, bitwise, reused or trained.
    def rows(result):
        return {(r["cell"], r["seed"]): {k: v for k, v in r.items() if k.startswith("test/")}
                for r in result.replicates}
    assert rows(plain) == rows(reused) and len(rows(reused)) == 4
    assert all(r["error"] is None for r in reused.replicates)

    # Replicate 0 (the search's seed) of each cell came from the search trial's final state:
    # its one report is the test; replicate 1 reported its epochs, then its test.
    trials = tune.ExperimentAnalysis(str(reused.study_dir / "replicate")).trials
    for t in trials:
        from_search = t.config.get("reused_checkpoint")
        assert bool(from_search) == (t.config["replicate"] == 0), t.config
        if from_search:  # relative: the study may have moved by the time it resumes
            assert from_search.startswith("search/")
            assert (settings.study_dir / from_search / TRIAL_STATE).is_file()
            assert t.last_result["training_iteration"] == 1
        else:
            assert t.last_result["training_iteration"] == EPOCHS + 1

    # MLflow: each replicate exactly once, the reused one with its final and test metrics.
    client = MlflowClient(reused.tracking_uri)
    runs = [r for r in client.search_runs([reused.experiment_id], max_results=100)
            if r.data.tags.get("phase") == "replicate"]
    assert Counter(r.info.run_name for r in runs) == Counter(
        f"{cell} seed {s}" for cell in ("b1@0.40", "le@0.40") for s in (0, 1))
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"test/f1_macro", "val/loss", "epoch"} <= set(r.data.metrics)
