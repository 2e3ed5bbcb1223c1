"""The study-overhead bench stays runnable and says what it measured: ``--quick`` runs every
study it reports (the fixed one, the main one, fused, the size sweep) through the whole real
path, checks in each that every epoch reached MLflow exactly once, and writes its figures. What
is asserted is what the figures are made of, never how fast anything was."""

from __future__ import annotations

import math

from tests.bench.conftest import quick_figures


def test_bench_harness_quick_reports_every_figure_of_the_studies_it_ran(tmp_path):
    fig, stdout = quick_figures("bench_harness.py", tmp_path, timeout=900)
    # The studies it says it ran, of the sizes --quick asks for; the sweep's are the same studies.
    assert (fig["fixed"]["trials"], fig["fixed"]["epochs"]) == (1, 1)
    assert fig["fixed"]["process_s"] > 0  # the same study as a whole `tagtune study` process
    assert (fig["main"]["trials"], fig["main"]["epochs"], fig["main"]["fuse"]) == (4, 1, 1)
    assert (fig["fused"]["trials"], fig["fused"]["fuse"]) == (4, 2)
    assert [s["trials"] for s in fig["sizes"]] == [1, 4]
    assert fig["sizes"][1]["wall_s"] == fig["main"]["wall_s"]
    assert math.isclose(fig["growth"], fig["sizes"][1]["per_trial_s"] / fig["sizes"][0]["per_trial_s"])
    for f in (fig["fixed"], fig["main"], fig["fused"]):
        slots = f["slots"]
        assert slots == 2 and f["wall_s"] > 0 and f["bare_s"] > 0
        # The figures are what they say they are, from the same measurements.
        assert math.isclose(f["efficiency"], f["bare_s"] / (f["wall_s"] * slots))
        assert math.isclose(f["bare_epoch_ms"] * f["trials"] * f["epochs"], 1000 * f["bare_s"])
        assert math.isclose(f["per_trial_s"] * f["trials"], f["wall_s"] * slots - f["bare_s"])
        assert math.isclose(f["per_trial_epoch_ms"] * f["epochs"] / 1000, f["per_trial_s"])
        assert 0 < f["driver_cpu_share"] < 1
        # The cores' time over the study process's life, every part of it counted once: the
        # parts and the idle rest make the whole; trials ran in trial processes (solo) or stacks.
        c = f["cores"]
        assert math.isclose(c["trials"] + c["stacks"] + c["driver"] + c["ray"] + c["idle"],
                            c["process_s"] * c["cpus"])
        assert c["process_s"] > f["wall_s"] and c["driver"] > 0 and c["ray"] > 0
        assert c["trials"] > 0 and (c["stacks"] > 0) == (f["fuse"] > 1)
        assert c["idle"] >= 0  # the processes' CPU seconds fit in their wall time
        # Trials overlap at most as many at once as there are places for them.
        assert 0 < f["concurrency"] <= slots * f["fuse"] + 1e-9
        assert f["snapshot_warnings"] >= 0
    # Fused: also against the same configs' bare stacks (fit_many), the machinery's own share.
    fused = fig["fused"]
    assert fused["bare_stacks_s"] > 0
    assert math.isclose(fused["stack_efficiency"],
                        fused["bare_stacks_s"] / (fused["wall_s"] * fused["slots"]))
    assert "bare_stacks_s" not in fig["main"]
    assert fig["fixed"]["concurrency"] <= 1 + 1e-9  # one trial: nothing to overlap with
    lines = stdout.splitlines()
    assert any(line.startswith("fixed cost (1 trial x 1 epoch): ") for line in lines)
    assert any(line.startswith("per-trial cost, 4 trials against 1: x") for line in lines)
