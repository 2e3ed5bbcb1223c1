"""The re-rank (setting ``rerank``): a cell's top trials retrained on extra seeds, the best config
chosen by the mean validation score; best.json records it; the replicates test the chosen config on
seeds the re-rank never used; a resume reruns nothing; extend refuses a change of rerank."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tagtune.study import objective
from tests.conftest import TINY_TRAIN, invoke

# The tests on the study fixture are `long`: a tiny study with a re-rank and a resume, ~2 min on
# a shared 2-core VM.
STUDY = dict(methods=("b1",), missing=(0.4,), trials=3, replicates=1, epochs=2, grace_period=2,
             checkpoint_every=2, paper_point=False, rerank=2, rerank_seeds=1)


def _runs(phase_dir) -> dict[str, tuple[dict, dict]]:
    """trial id -> (params.json, last result) of a phase's trials."""
    out = {}
    for p in phase_dir.glob("*/params.json"):
        last = json.loads((p.parent / "result.json").read_text().splitlines()[-1])
        out[p.parent.name.rsplit("_", 1)[-1]] = (json.loads(p.read_text()), last)
    return out


@pytest.fixture(scope="module")
def study(ray_session, tiny_dataset, tmp_path_factory):
    from tagtune.launch.study import run_study
    from tagtune.study.data import save
    from tagtune.study.folder import StudySettings

    root = tmp_path_factory.mktemp("rerank")
    path = save(tiny_dataset, root / "tiny.h5")
    settings = StudySettings(data=str(path), name="rr", storage=str(root), train=TINY_TRAIN, **STUDY)
    return settings, run_study(settings, verbose=0)


@pytest.mark.long
def test_the_top_trials_are_rerun_on_extra_seeds_and_the_best_mean_wins(study):
    settings, result = study
    key, name = objective.score_key(settings.objective), settings.objective
    runs = _runs(result.study_dir / "search")
    search = {t: last[key] for t, (_, last) in runs.items() if last.get("complete")}
    # Best first; a tie keeps the earlier trial (Optuna's trial number).
    top = sorted(search, key=lambda t: (objective.loss(search[t], name), runs[t][0]["optuna_trial"]))[:2]
    reruns = _runs(result.study_dir / "rerank")
    # Each of the top 2 once more, on seed + 1000: never a replicate's seed.
    assert sorted(c["rerank_of"] for c, _ in reruns.values()) == sorted(top)
    assert {c["seed"] for c, _ in reruns.values()} == {settings.seed + 1000}
    assert all(c["phase"] == "rerank" and last["complete"] for c, last in reruns.values())
    extra = {c["rerank_of"]: last[key] for c, last in reruns.values()}
    means = {t: (search[t] + extra[t]) / 2 for t in top}
    chosen = top[0] if means[top[0]] == means[top[1]] else max(top, key=means.get)
    best = json.loads((result.study_dir / "best.json").read_text())["b1@0.40"]
    record = best["rerank"]
    assert best["trial_id"] == record["chosen"] == chosen and record["single_best"] == top[0]
    assert [c["trial_id"] for c in record["candidates"]] == top
    for c in record["candidates"]:
        assert c["search"] == search[c["trial_id"]] and c["extra"] == [extra[c["trial_id"]]]
        assert c["mean"] == pytest.approx(means[c["trial_id"]])
    # The replicates retrain the chosen config, on the replicates' seeds.
    reps = _runs(result.study_dir / "replicate")
    assert [c["seed"] for c, _ in reps.values()] == [settings.seed]
    assert all(c["lr"] == best["config"]["lr"] for c, _ in reps.values())
    # Every re-rank run is one the study knows (MLflow keeps its run).
    from tagtune.launch.study import study_trial_ids

    assert set(reruns) <= study_trial_ids(result.study_dir)


@pytest.mark.long
def test_a_resume_of_the_finished_study_reruns_nothing(study):
    from tagtune.launch.study import resume_study

    settings, result = study
    before = sorted(_runs(result.study_dir / "rerank"))
    again = resume_study(result.study_dir, verbose=0)
    assert sorted(_runs(result.study_dir / "rerank")) == before
    assert again.best["b1@0.40"]["trial_id"] == result.best["b1@0.40"]["trial_id"]


@pytest.mark.long
def test_extend_refuses_a_change_of_rerank(study, tmp_path):
    settings, result = study
    d = tmp_path / "studies" / result.study_dir.name
    shutil.copytree(result.study_dir, d, symlinks=True)
    config = tmp_path / "grow.yaml"
    config.write_text(yaml.safe_dump({"rerank": 3, "trials": 4}))
    out = invoke("study", "extend", d, "--config", config, "--quiet")
    assert out.exit_code == 2
    assert out.stderr.strip() == ("error: extend: rerank: 3 differs from the study's 2: "
                                  "old and new trials would not be comparable; run a new study")


def test_bad_rerank_is_one_line_exit_2(data_file, tmp_path):
    out = invoke("study", "--data", data_file, "--storage", tmp_path, "--rerank", "-1")
    assert out.exit_code == 2 and "rerank" in out.stderr and "\n" not in out.stderr.strip()


@pytest.mark.long
def test_an_extension_reranks_only_what_no_earlier_round_ran(study, tmp_path):
    from tagtune.launch.extend import extend_study

    settings, result = study
    d = tmp_path / "studies" / result.study_dir.name
    shutil.copytree(result.study_dir, d, symlinks=True)
    first = {(c["rerank_of"], c["seed"]) for c, _ in _runs(d / "rerank").values()}
    grown = extend_study(d, trials=5, verbose=0)
    key, name = objective.score_key(settings.objective), settings.objective
    runs = {**_runs(d / "search"), **_runs(d / "search.2")}
    search = {t: last[key] for t, (_, last) in runs.items() if last.get("complete")}
    top = sorted(search, key=lambda t: (objective.loss(search[t], name), runs[t][0]["optuna_trial"]))[:2]
    second = {(c["rerank_of"], c["seed"]) for c, _ in _runs(d / "rerank.2").values()} \
        if (d / "rerank.2").exists() else set()
    # Round 2 ran exactly the top 2's (trial, seed) pairs round 1 had not.
    assert not first & second and first | second >= {(t, settings.seed + 1000) for t in top}
    assert second == {(t, settings.seed + 1000) for t in top} - first
    record = json.loads((d / "best.json").read_text())["b1@0.40"]["rerank"]
    assert [c["trial_id"] for c in record["candidates"]] == top
    assert grown.best["b1@0.40"]["trial_id"] == record["chosen"]
