"""Tune's snapshot kept whole and put back: tagtune.study.folder.tunestate on hand-made folders (no Ray).

The files are shaped like Tune 2.60's: ``experiment_state-<session>.json`` is JSON with a
``trial_data`` list of (trial JSON, runtime JSON) strings; the searcher's and the search
generator's states are pickles (the latter despite its ``.json`` name).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest

from tagtune.study import atomic
from tagtune.study.folder import tunestate

SESSION = "2026-12-04_10-00-00"


def _experiment_state(statuses: dict[str, str]) -> bytes:
    data = [[json.dumps({"trial_id": t, "status": s}), json.dumps({"last_result": {}})]
            for t, s in statuses.items()]
    return json.dumps({"trial_data": data, "runner_data": {}, "stats": {}}).encode()


def _snapshot(folder: Path, statuses: dict[str, str], session: str = SESSION, note: str = "") -> None:
    """One generation of Tune's snapshot files in ``folder`` (a staging or a phase folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"experiment_state-{session}.json").write_bytes(_experiment_state(statuses))
    (folder / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"note": note}))
    (folder / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": len(statuses)}))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def phase(tmp_path) -> Path:
    """A phase folder whose snapshot was also kept, twice (generations 1 and 2)."""
    staging, phase = tmp_path / "staging", tmp_path / "search"
    (phase).mkdir()
    (phase / tunestate.TUNER_FILE).write_bytes(pickle.dumps({"tuner": 1}))
    _snapshot(staging, {"a": "TERMINATED", "b": "RUNNING"}, note="first")
    tunestate.keep(staging, phase)
    _snapshot(staging, {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING"}, note="second")
    tunestate.keep(staging, phase)
    _snapshot(phase, {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING"}, note="second")
    return phase


def test_keep_writes_whole_generations_and_keeps_the_newest_two(phase, tmp_path):
    staging = tmp_path / "staging"
    for n in range(3):
        _snapshot(staging, {"a": "TERMINATED", "x": "RUNNING"}, note=f"more {n}")
        tunestate.keep(staging, phase)
    gens = tunestate.generations(phase)
    assert [g.name for g in gens] == ["000005", "000004"]  # numbered, newest first, 2 kept
    assert all(tunestate.whole(g) for g in gens)
    assert sorted(p.name for p in gens[0].iterdir()) == sorted(
        [f"experiment_state-{SESSION}.json", f"searcher-state-{SESSION}.pkl",
         f"search_gen_state-{SESSION}.json", tunestate.TUNER_FILE, tunestate.MANIFEST])
    assert not [p for p in (phase / tunestate.LAST_GOOD).iterdir() if p.name.startswith(".tmp")]


def test_keep_refuses_a_torn_staging_file_and_keeps_the_last_good(phase, tmp_path):
    staging = tmp_path / "staging"
    (staging / f"searcher-state-{SESSION}.pkl").write_bytes(b"\x80\x05\x95")  # cut
    assert tunestate.keep(staging, phase) is None
    assert [g.name for g in tunestate.generations(phase)] == ["000002", "000001"]


@pytest.mark.parametrize("name", [f"experiment_state-{SESSION}.json", f"search_gen_state-{SESSION}.json"])
def test_keep_refuses_a_staging_file_cut_anywhere_but_its_end(phase, tmp_path, name):
    # Keep does not parse what Tune has just written (40 MB at 1,000 trials): it looks at the end.
    staging = tmp_path / "staging"
    whole_bytes = (staging / name).read_bytes()
    for cut in range(1, len(whole_bytes) - 1, max(1, len(whole_bytes) // 50)):
        if whole_bytes[:cut].rstrip()[-1:] in (b"}", b"]", b"."):
            continue  # ends as a whole one would: only a parse tells, and whole() parses
        (staging / name).write_bytes(whole_bytes[:cut])
        assert tunestate.keep(staging, phase) is None, cut
    assert [g.name for g in tunestate.generations(phase)] == ["000002", "000001"]


def test_keep_refuses_a_cut_tuner_file(phase, tmp_path):
    staging = tmp_path / "staging"
    (phase / tunestate.TUNER_FILE).write_bytes(pickle.dumps({"tuner": 1, "more": "x" * 40})[:30])
    assert tunestate.keep(staging, phase) is None
    assert [g.name for g in tunestate.generations(phase)] == ["000002", "000001"]


def test_a_generation_cut_before_its_manifest_is_not_one(phase):
    cut = phase / tunestate.LAST_GOOD / "000009"
    cut.mkdir()
    (cut / f"experiment_state-{SESSION}.json").write_bytes(b"")
    assert [g.name for g in tunestate.generations(phase)] == ["000002", "000001"]


def test_nothing_torn_nothing_changed(phase):
    before = _digest(phase)
    assert tunestate.torn(phase) == [] and tunestate.repair(phase) is None
    assert _digest(phase) == before


@pytest.mark.parametrize("name", [f"experiment_state-{SESSION}.json", f"searcher-state-{SESSION}.pkl",
                                  f"search_gen_state-{SESSION}.json", tunestate.TUNER_FILE])
@pytest.mark.parametrize("how", ["empty", "half"])
def test_a_torn_file_gets_the_last_generation_back(phase, name, how):
    path = phase / name
    whole = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else whole[: len(whole) // 2])
    assert [p.name for p, _ in tunestate.torn(phase)] == [name]

    repaired = tunestate.repair(phase)
    assert repaired is not None and repaired.generation.name == "000002"
    assert repaired.torn == (name,) and repaired.unfinished == 1
    assert path.read_bytes() == whole  # generation 2 is what the folder held
    assert tunestate.torn(phase) == []
    (aside,) = (phase / tunestate.TORN).iterdir()  # kept for a look, not deleted
    assert aside.name.startswith(name + ".") and len(aside.read_bytes()) < len(whole)
    assert "resuming from the snapshot of" in repaired.message("search")
    assert repaired.message("search", ended_since=1).endswith(
        "0 trials re-run from their checkpoints (1 more ended after it: kept, not re-run)")


def test_the_newest_generation_torn_too_falls_back_one_more(phase):
    (phase / f"experiment_state-{SESSION}.json").write_bytes(b"")
    (tunestate.generations(phase)[0] / f"searcher-state-{SESSION}.pkl").write_bytes(b"")
    repaired = tunestate.repair(phase)
    assert repaired.generation.name == "000001"
    # Every file from that one generation: they describe each other.
    assert pickle.loads((phase / f"searcher-state-{SESSION}.pkl").read_bytes()) == {"note": "first"}
    assert tunestate.trial_statuses(phase / f"experiment_state-{SESSION}.json") == {
        "a": "TERMINATED", "b": "RUNNING"}


def test_a_newer_session_torn_is_set_aside_so_tune_reads_the_kept_one(phase):
    later = "2026-12-04_11-00-00"  # a resume's first snapshot, cut before it was kept
    (phase / f"experiment_state-{later}.json").write_bytes(b'{"trial_da')
    repaired = tunestate.repair(phase)
    assert repaired.generation.name == "000002"
    assert tunestate.newest(phase, tunestate.EXPERIMENT_STATE).name == f"experiment_state-{SESSION}.json"


def test_nothing_whole_to_put_back_is_refused_and_nothing_changes(phase):
    for g in tunestate.generations(phase):
        (g / f"experiment_state-{SESSION}.json").write_bytes(b"")
    (phase / f"experiment_state-{SESSION}.json").write_bytes(b"")
    before = _digest(phase)
    with pytest.raises(tunestate.Unrecoverable) as e:
        tunestate.repair(phase)
    assert e.value.path.name == f"experiment_state-{SESSION}.json" and e.value.why == "empty"
    assert _digest(phase) == before


def test_a_phase_cut_while_it_started_starts_again(tmp_path):
    phase = tmp_path / "search"
    phase.mkdir()
    (phase / tunestate.TUNER_FILE).write_bytes(pickle.dumps({"tuner": 1})[:5])
    repaired = tunestate.repair(phase)
    assert repaired.generation is None and "starts again" in repaired.message("search")
    assert not (phase / tunestate.TUNER_FILE).exists()


def test_recorded_trials_reads_the_kept_snapshot_where_the_newest_is_torn(phase):
    assert tunestate.recorded_trials(phase) == {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING"}
    (phase / f"experiment_state-{SESSION}.json").write_bytes(b"")
    assert tunestate.recorded_trials(phase) == {"a": "TERMINATED", "b": "TERMINATED", "c": "RUNNING"}
    assert tunestate.recorded_trials(phase.parent / "nothing") is None


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = atomic.write_json(tmp_path / "best.json", {"v": 1})

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic.write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]  # no temp file left behind


def test_a_searcher_that_saves_json_is_read_as_whole_and_as_torn_when_cut(tmp_path):
    # The replicate phase's searcher (tagtune.launch.study.ListSearcher) saves JSON.
    path = tmp_path / f"searcher-state-{SESSION}.pkl"
    path.write_text(json.dumps({"configs": [{"seed": 0}], "next": 1}))
    assert tunestate.problem(path) is None
    path.write_bytes(path.read_bytes()[:10])
    assert tunestate.problem(path).startswith("cut short at byte 10")
