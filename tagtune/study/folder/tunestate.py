"""Ray Tune's experiment snapshot on disk: which files it is, whether they are whole, and the
last complete generation that tagtune keeps of it. Files only: no Ray is imported here, so the
analysis reads a study with it too.

Why: Ray Tune 2.60 writes ``experiment_state-<session>.json`` (the trial list a resume starts
from) with a plain ``open("w")`` into its driver's staging folder and then copies it, in
place again, into the study's phase folder, every ~10 s. A driver killed during that copy
leaves the file torn, and ``Tuner.restore`` can then never read it. So after each snapshot
(:class:`tagtune.launch.snapshots.SnapshotKeeper`) the generation that Tune has just written
whole is copied into ``PHASE/last-good/<n>/`` (temp folder, fsync, rename), and a resume first
checks the phase folder's newest files and, where one is torn, puts the last good generation
back (:func:`repair`).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tagtune.study import atomic

log = logging.getLogger(__name__)

LAST_GOOD = "last-good"
TORN = "torn"  # where a repair sets the torn files aside (kept, never deleted)
MANIFEST = "manifest.json"  # written last into a generation: its presence means complete
KEEP = 2  # generations kept: the newest, and the one before in case the newest is cut
# What Tuner.restore reads of a phase folder: the newest file (by name) of each pattern.
EXPERIMENT_STATE = "experiment_state-*.json"
SNAPSHOT_FILES = (EXPERIMENT_STATE, "search_gen_state-*.json", "searcher-state-*.pkl",
                  "callback-states-*.pkl")
TUNER_FILE = "tuner.pkl"  # written once, when the phase starts
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


def _problem(name: str, data: bytes) -> str | None:
    """Why the bytes of the file ``name`` cannot be read back (None: they can)."""
    if not data:
        return "empty"
    # Tune's experiment state is JSON, its other files are pickles whatever their suffix; a
    # searcher writes what it likes (tagtune's replicate phase: JSON). Cut short, neither reads.
    readers = (json.loads, pickle.loads) if fnmatch.fnmatch(name, EXPERIMENT_STATE) else (
        pickle.loads, json.loads)
    errors = []
    for read in readers:
        try:
            read(data)
            return None
        except Exception as e:  # noqa: BLE001 -- any way of failing to read it is a torn file
            errors.append(type(e).__name__)
    return f"cut short at byte {len(data)}: {errors[0]}"


def _unended(data: bytes) -> str | None:
    """Why bytes that Tune has just written whole do not end as a JSON document or a pickle does
    (None: they do). Not a parse: :func:`keep` runs with every snapshot, where parsing the
    experiment state (40 MB at 1,000 trials) took most of the copy's time, on the driver's thread
    with the trials waiting; only a file cut short is expected to fail it, and ``whole`` and
    ``torn`` still read every file whole before a resume relies on it."""
    if not data:
        return "empty"
    if data.rstrip()[-1:] in (b"}", b"]", b"."):  # JSON object or list; pickle's STOP opcode
        return None
    return f"cut short at byte {len(data)}: no end"


def problem(path: Path) -> str | None:
    """Why ``path`` is not a whole state file (None: it is)."""
    try:
        return _problem(path.name, path.read_bytes())
    except OSError as e:
        return f"unreadable ({e.strerror})"


def newest(directory: Path, pattern: str) -> Path | None:
    """The file Tune reads for ``pattern``: the greatest name (session names are timestamps)."""
    found = sorted(directory.glob(pattern))
    return found[-1] if found else None


def restorable(phase_dir: Path) -> bool:
    """Whether Tune can go on with the phase in ``phase_dir``: its tuner and an experiment state.

    Tune writes ``tuner.pkl`` when the phase starts and its first experiment state a step later; a
    phase killed between the two is one to start afresh. ``Tuner.restore`` would try, fail to read
    an experiment state, and "restart" the experiment -- with the default ``num_samples`` of 1,
    which it then saves as the phase's own: every later resume ends after a single trial (Ray 2.60:
    ``TunerInternal._fit_resume`` does not pass ``num_samples``)."""
    return (phase_dir / TUNER_FILE).is_file() and newest(phase_dir, EXPERIMENT_STATE) is not None


def torn(phase_dir: Path) -> list[tuple[Path, str]]:
    """The state files of ``phase_dir`` a resume would read and could not: (path, why)."""
    out = []
    for pattern in SNAPSHOT_FILES:
        path = newest(phase_dir, pattern)
        if path is not None and (why := problem(path)) is not None:
            out.append((path, why))
    tuner = phase_dir / TUNER_FILE
    if tuner.exists() and (why := problem(tuner)) is not None:
        out.append((tuner, why))
    return out


def generations(phase_dir: Path) -> list[Path]:
    """The kept generations of ``phase_dir``, newest first (only complete ones: a manifest)."""
    root = phase_dir / LAST_GOOD
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()),
                  key=lambda p: int(p.name), reverse=True)


def keep(staging: Path, phase_dir: Path) -> Path | None:
    """Copy the snapshot Tune has just written whole into ``staging`` (its driver folder) into a
    new generation of ``phase_dir/last-good``; drop all but the newest KEEP. Returns the new
    generation, or None where there is nothing whole to keep."""
    files = {p.name: p.read_bytes() for pattern in SNAPSHOT_FILES for p in staging.glob(pattern)}
    if not any(fnmatch.fnmatch(name, EXPERIMENT_STATE) for name in files):
        return None
    bad = {name: why for name, data in files.items() if (why := _unended(data))}
    tuner = phase_dir / TUNER_FILE
    if tuner.is_file():  # written once, as the phase started: a kill then may have cut it
        files[TUNER_FILE] = tuner.read_bytes()
        if why := _problem(TUNER_FILE, files[TUNER_FILE]):
            bad[TUNER_FILE] = why
    if bad:  # not expected (Tune wrote them before calling us); a torn copy is worth nothing
        log.warning("Tune snapshot not kept: %s", bad)
        return None
    root = phase_dir / LAST_GOOD
    root.mkdir(parents=True, exist_ok=True)
    kept = generations(phase_dir)
    number = int(kept[0].name) + 1 if kept else 1
    final = root / f"{number:06d}"
    tmp = root / f".tmp-{number:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    manifest = {"saved_at": time.time(), "files": {name: len(data) for name, data in files.items()}}
    # Plain writes into the temp folder (nobody reads it), each fsynced; the manifest last.
    for name, data in [*files.items(), (MANIFEST, json.dumps(manifest).encode())]:
        with open(tmp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    atomic.fsync_dir(tmp)
    os.replace(tmp, final)
    atomic.fsync_dir(root)
    for old in generations(phase_dir)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def whole(generation: Path) -> bool:
    """Every file the generation's manifest names is there and reads back."""
    try:
        names = json.loads((generation / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((generation / n).is_file() and problem(generation / n) is None for n in names)


def trial_statuses(experiment_state: Path) -> dict[str, str]:
    """trial_id -> Tune status (TERMINATED, ERROR, RUNNING, ...) in one experiment_state file;
    ValueError/KeyError/TypeError where it is not one."""
    out = {}
    for trial_json, _runtime in json.loads(experiment_state.read_text())["trial_data"]:
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


def recorded_trials(phase_dir: Path) -> dict[str, str] | None:
    """trial_id -> Tune status from the newest whole snapshot of ``phase_dir`` (its own file,
    else the newest kept generation); None without one."""
    candidates = [newest(phase_dir, EXPERIMENT_STATE)]
    candidates += [newest(g, EXPERIMENT_STATE) for g in generations(phase_dir)]
    for path in candidates:
        if path is None:
            continue
        try:
            return trial_statuses(path)
        except (OSError, ValueError, KeyError, TypeError):  # torn, or another Ray's format
            continue
    return None


@dataclass(frozen=True)
class Repair:
    """What :func:`repair` did to a phase folder."""

    generation: Path | None
    """The kept generation put back (None: the phase had not snapshotted yet; it starts again)."""
    saved_at: float
    """When that snapshot was taken (seconds since the epoch)."""
    unfinished: int
    """Trials that snapshot had not seen end: they continue from their checkpoints."""
    torn: tuple[str, ...]
    """The torn files, by name (set aside in ``PHASE/torn/``)."""

    def message(self, phase: str, ended_since: int = 0) -> str:
        """One line for the terminal; ``ended_since``: of the unfinished trials, those that
        ended after the snapshot (their results are reported again, not retrained)."""
        if self.generation is None:
            return (f"{phase} state torn by the interruption before its first snapshot "
                    f"({', '.join(self.torn)}); the {phase} phase starts again")
        at = dt.datetime.fromtimestamp(self.saved_at).strftime("%H:%M:%S")
        since = (f" ({ended_since} more ended after it: kept, not re-run)" if ended_since else "")
        return (f"{phase} state torn by the interruption; resuming from the snapshot of {at}, "
                f"{self.unfinished - ended_since} trials re-run from their checkpoints{since}")


class Unrecoverable(Exception):
    """A torn state file and no whole generation to put back: (path, why)."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path}: {why}")


def repair(phase_dir: Path) -> Repair | None:
    """Make ``phase_dir`` resumable where an interruption tore its state: None if nothing is
    torn; else the newest whole kept generation is put back (the torn files set aside in
    ``PHASE/torn/``). Raises Unrecoverable -- changing nothing -- where none is whole."""
    problems = torn(phase_dir)
    if not problems:
        return None
    names = tuple(p.name for p, _ in problems)
    use = next((g for g in generations(phase_dir) if whole(g)), None)
    if use is None:
        if newest(phase_dir, EXPERIMENT_STATE) is None and names == (TUNER_FILE,):
            # Cut while the phase was being set up: no trial has a snapshot to resume from.
            _set_aside(phase_dir, [phase_dir / TUNER_FILE])
            return Repair(None, time.time(), 0, names)
        raise Unrecoverable(*problems[0])
    files = json.loads((use / MANIFEST).read_text())
    # The generation replaces every snapshot file of the folder that Tune would read instead:
    # the newest of each pattern must come from one generation (they describe each other).
    replaced = []
    for pattern in SNAPSHOT_FILES:
        ours = max((n for n in files["files"] if fnmatch.fnmatch(n, pattern)), default="")
        replaced += [p for p in phase_dir.glob(pattern) if p.name > ours]
    _set_aside(phase_dir, [p for p, _ in problems] + replaced)
    for name in files["files"]:
        atomic.write_bytes(phase_dir / name, (use / name).read_bytes())
    statuses = trial_statuses(newest(use, EXPERIMENT_STATE))
    unfinished = sum(s in UNFINISHED for s in statuses.values())
    return Repair(use, float(files["saved_at"]), unfinished, names)


def _set_aside(phase_dir: Path, paths: list[Path]) -> None:
    where = phase_dir / TORN
    where.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in dict.fromkeys(paths):
        if path.exists():
            os.replace(path, where / f"{path.name}.{stamp}")
    atomic.fsync_dir(phase_dir)


__all__ = ["LAST_GOOD", "Repair", "Unrecoverable", "generations", "keep", "recorded_trials",
           "repair", "torn", "trial_statuses"]
