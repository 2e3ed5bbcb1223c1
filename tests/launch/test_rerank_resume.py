"""Ctrl-C in the re-rank phase: the state is saved, `tagtune study resume` finishes it; every
re-rank run ran (and is logged) once."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient

from tests.launch.processes import base_env
from tests.launch.test_reliability import slow_study
from tests.launch.test_resume import _tagtune, ctrl_c_study

pytestmark = [pytest.mark.cluster, pytest.mark.long, pytest.mark.timeout(420)]


def test_ctrl_c_in_the_rerank_phase_and_resume_finishes(tmp_path):
    config = slow_study(tmp_path, "rr", methods=["b1"], missing=[0.0], trials=3, replicates=1,
                        epochs=8, grace_period=8, checkpoint_every=2, paper_point=False,
                        rerank=2, rerank_seeds=2)
    study_dir = tmp_path / "studies" / "rr"
    env = base_env()
    returncode, err = ctrl_c_study(config, study_dir, '"phase": "rerank"', 240, env)
    assert returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: {study_dir}: interrupted in the rerank phase"), last
    assert not (study_dir / "summary.json").exists() and not (study_dir / "replicate").exists()

    done = subprocess.run(_tagtune("study", "resume", str(study_dir), "--quiet"), env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    best = json.loads((study_dir / "best.json").read_text())["b1@0.00"]
    assert len(best["rerank"]["candidates"]) == 2
    assert all(len(c["extra"]) == 2 for c in best["rerank"]["candidates"])
    pairs = [(json.loads(p.read_text())["rerank_of"], json.loads(p.read_text())["seed"])
             for p in (study_dir / "rerank").glob("*/params.json")]
    assert sorted(set(pairs)) == sorted(pairs) and len(pairs) == 4  # each (trial, seed) once
    summary = json.loads((study_dir / "summary.json").read_text())
    runs = MlflowClient(summary["tracking_uri"]).search_runs([summary["experiment_id"]])
    trials = [r for r in runs if "tagtune.trial_id" in r.data.tags]
    assert max(Counter(r.data.tags["tagtune.trial_id"] for r in trials).values()) == 1
    assert Counter(r.data.tags["phase"] for r in trials) == {"search": 3, "rerank": 4, "replicate": 1}
    assert all(r.info.status == "FINISHED" for r in runs)
