"""``make demo``'s entry point, tagtune.launch.demo, at a tiny size on the session's Ray."""

from __future__ import annotations

import re

import pytest

from tagtune.launch import demo

pytestmark = pytest.mark.timeout(600)
METHODS = ("b0", "b1", "le", "mt")


def test_demo_runs_a_study_and_says_where_everything_is(ray_session, tmp_path, capsys):
    demo.main(out=tmp_path, n_clips=150, missing=(0.0,), trials=1, replicates=1, epochs=2,
              grace_period=2, checkpoint_every=2)
    text = capsys.readouterr().out
    rows = re.findall(r"^  (\w+@[\d.]+)\s+([\d.]+)  \((\d) seeds\)$", text, flags=re.M)
    assert sorted(cell for cell, _, _ in rows) == [f"{m}@0.00" for m in METHODS]
    assert all(seeds == "1" and 0.0 <= float(f1) <= 1.0 for _, f1, seeds in rows)
    study_dir = tmp_path / "demo"
    assert f"study:    {study_dir}" in text
    assert f"mlflow:   sqlite:///{study_dir / 'mlflow.db'}" in text
    assert f"report:   {study_dir / 'analysis' / 'report.html'}" in text
    assert (study_dir / "analysis" / "report.html").is_file() and (study_dir / "best.json").is_file()
    said = text.split("clear after Holm?):\n", 1)[1].splitlines()
    assert said[0].split()[:2] == ["removed", "best"]  # the answer table leads the conclusions
    assert said[1].split()[0] == "0%"  # one row per proportion
    assert "search    4/4 done" in text  # the live display, as `tagtune study` shows it
    assert not [n for n in ("A new study created", "Configuration for experiment", "TensorBoard")
                if n in text]  # Ray's, Tune's and Optuna's lines went to study.log
    assert re.search(r"^wall time \d+ s$", text, flags=re.M)
