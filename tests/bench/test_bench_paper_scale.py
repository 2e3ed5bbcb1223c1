"""The paper-scale bench stays runnable: ``--quick`` runs its slice through the real harness
(a study per method, one cell to the end) and projects the whole."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_paper_scale  # noqa: E402
import study_cost  # noqa: E402


@pytest.mark.long
def test_quick_slice_runs_a_cell_to_the_end_and_projects(tmp_path, ray_session, capsys):
    result = bench_paper_scale.main(["--quick"], out=tmp_path)
    (row,) = result["rows"]
    q = bench_paper_scale.QUICK
    assert row["method"] == "b1" and row["failed"] == 0
    assert row["completed"] + row["stopped_early"] == q["trials"] and row["completed"] >= 1
    assert row["replicates"] == q["replicates"]
    assert (tmp_path / "slice-b1" / "best.json").is_file()  # the real harness ran
    assert result["whole_s"] == pytest.approx(row["wall_s"] * q["proportions"])
    assert result["not_reused_s"] > result["whole_s"] > 0  # the slice ran with the saving
    assert "projected whole study" in capsys.readouterr().out


def test_study_cost_counts_asha_and_the_replicate_saving():
    assert study_cost.rungs(100) == [5, 15, 45]
    per_cell, done = study_cost.asha_epochs(trials=20, max_t=100, reps=200)
    assert 20 * 5 < per_cell < 20 * 100 and 0 < done < 1
    assert study_cost.asha_epochs(trials=1, max_t=100, reps=5) == (100.0, 1.0)  # the first always runs on
    plain, reused = study_cost.paper_study(), study_cost.paper_study(reuse_best=True)
    for m in ("b0", "b1", "mt"):
        assert plain.replicate[m] == 5 * 5 * 100 and plain.total(m) - reused.total(m) == 5 * 100
    assert plain.replicate["le"] == 5 * (5 * 100 + 4 * 100)  # students, and the teachers of new seeds
    assert plain.search["le"] - plain.search["b1"] == 5 * 100  # one shared teacher per cell


def test_trained_epochs_counts_the_epochs_a_report_carries_each_once(tmp_path):
    """A report carries the epochs held since the previous one; a replicate's last report repeats
    its last epoch with the test metrics: each trained epoch counts once."""
    import json

    from tagtune.launch.trainable import EARLIER

    def rows(method, reports):
        return "".join(json.dumps({"config": {"method": method}, **r}) + "\n" for r in reports)

    a = tmp_path / "search" / "t1"
    b = tmp_path / "replicate" / "t2"
    for d in (a, b):
        d.mkdir(parents=True)
    (a / "result.json").write_text(rows("b1", [
        {"epoch": 3, EARLIER: [{"epoch": 1}, {"epoch": 2}]}, {"epoch": 5, EARLIER: [{"epoch": 4}]}]))
    (b / "result.json").write_text(rows("b1", [{"epoch": 2, EARLIER: [{"epoch": 1}]}, {"epoch": 2}]))
    assert bench_paper_scale.trained_epochs(tmp_path) == {"b1": 5 + 2}


def test_bf16_reprojection_scales_only_the_bare_epoch():
    same = bench_paper_scale.reproject(1.0)
    recorded = sum(wall for wall, _ in bench_paper_scale.RECORDED.values()) * 5
    assert same["fp32_s"] == pytest.approx(recorded) and same["bf16_s"] == pytest.approx(recorded)
    fast = bench_paper_scale.reproject(2.0)
    assert same["fp32_s"] / 2 < fast["bf16_s"] < same["fp32_s"]  # the harness's share does not shrink
    b1 = fast["rows"]["b1"]
    assert b1["bf16_core_s_per_epoch"] == pytest.approx(1.17 - 0.842 / 2)


@pytest.mark.long
def test_together_slice_runs_the_cells_as_one_study_and_counts_what_they_cost(tmp_path, ray_session, capsys):
    """``--together``: the slice's cells in ONE study (as the whole study runs them), the epochs
    ASHA really let them train, and the CPU of every process of the run, by role."""
    r = bench_paper_scale.main(["--quick", "--together"], out=tmp_path)
    q = bench_paper_scale.QUICK
    assert (tmp_path / "slice" / "best.json").is_file()  # the real harness ran, one study
    assert set(r["epochs"]) == {"b1"} and r["epochs"]["b1"] >= q["trials"] * 1
    assert r["whole_s"] == pytest.approx(r["wall_s"] * q["proportions"])
    assert r["cpu"]["driver"] > 0 and r["cpu"]["trials"] > 0  # the workers' CPU, not only ours
    assert r["core_s_per_epoch"] == pytest.approx(sum(r["cpu"].values()) / r["epochs"]["b1"])
    assert "projected whole study" in capsys.readouterr().out
