"""The paper's point, replicated on the best config's seeds: the baseline the search must beat.

Each cell's paper point is its first search trial (``optuna_trial`` 0: the paper's settings,
enqueued first). In the replicate phase it is retrained with seeds seed + r, r < replicates, as
the cell's best config is -- a replicate config with ``point: paper`` -- unless the best trial IS
the paper point (then the gain is 0 by construction). In an extended study only the seeds it
lacks are run; a paper-point replicate is never superseded (the paper point does not change).
The statistics are tagtune.analysis.gain's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tagtune.analysis.gain import PAPER
from tagtune.study.folder import SEARCH, phase_dirs, trial_id_of

POINT = "point"
"""The trial config key that marks a paper-point replicate (folder.STUDY_KEYS has it)."""


def paper_trials(study_dir: Path) -> dict[str, dict[str, Any]]:
    """Per cell, its paper-point search trial: {"trial_id", "config"} (the first round it ran in)."""
    out: dict[str, dict[str, Any]] = {}
    for _, path in phase_dirs(study_dir, SEARCH):
        for params in sorted(path.glob("*/params.json")) if path.is_dir() else ():
            try:
                config = json.loads(params.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if config.get("optuna_trial") == 0 and config.get("cell") not in out:
                out[config["cell"]] = {"trial_id": trial_id_of(params.parent.name), "config": config,
                                       "complete": _complete(params.parent)}
    return out


def _complete(trial_dir: Path) -> bool:
    """Whether the trial ran to the end (its last report says so): only then does its final state
    stand in for a replicate; one ASHA stopped is retrained."""
    path = trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return bool(json.loads(line).get("complete"))
        except json.JSONDecodeError:
            continue
    return False


def kept(best: dict[str, dict[str, Any]], paper: dict[str, dict[str, Any]]) -> list[str]:
    """Cells whose best trial is their paper point."""
    return sorted(c for c, b in best.items() if c in paper and paper[c]["trial_id"] == b["trial_id"])


def configs(best: dict[str, dict[str, Any]], paper: dict[str, dict[str, Any]], seed: int,
            replicates: int, done: Iterable[tuple[str, int]],
            reusable: Callable[[str, dict[str, Any]], tuple[int, Path] | None]) -> list[dict[str, Any]]:
    """The paper-point replicate configs still to run: cells with a best config other than their
    paper point, seeds not in ``done`` ((cell, seed) pairs already run); ``reusable(cell, trial)``
    the paper trial's final state where its seed is a replicate's (as for the best config)."""
    done, out = set(done), []
    skip = set(kept(best, paper))
    for cell in best:
        if cell in skip or cell not in paper:
            continue
        reuse = reusable(cell, paper[cell]) if paper[cell].get("complete") else None
        for r in range(replicates):
            if (cell, seed + r) in done:
                continue
            out.append({**paper[cell]["config"], "phase": "replicate", "replicate": r,
                        "seed": seed + r, "cell": cell, POINT: PAPER})
            if reuse is not None and reuse[0] == seed + r:
                out[-1]["reused_checkpoint"] = str(reuse[1])
    return out


def split_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Replicate rows as (the best configs', the paper points')."""
    return ([r for r in rows if r.get(POINT) != PAPER], [r for r in rows if r.get(POINT) == PAPER])


__all__ = ["POINT", "configs", "kept", "paper_trials", "split_rows"]
