"""The replicate phase: each cell's best config retrained with K seeds (the search's own final state
standing in where it ran with one of them); in a later round only what it lacks."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import Searcher

from tagtune.launch import paper_point
from tagtune.launch.counts import analysis
from tagtune.launch.objective import metric
from tagtune.launch.phase import fit_or_resume
from tagtune.launch.ray_start import max_concurrent
from tagtune.launch.tracking import (
    SUPERSEDED_TAG,
    tag_trials,
)
from tagtune.launch.trainable import TRIAL_STATE
from tagtune.launch.wiring import Output, phase_trainable, run_config, trial_dirname_of
from tagtune.study import atomic
from tagtune.study.folder import (
    REPLICATE,
    ROUNDS,
    SEARCH,
    StudySettings,
    phase_dirname,
    phase_dirs,
    read_rounds,
    superseded,
    train_config,
    trial_dirname,
)

log = logging.getLogger(__name__)


def reusable_state(settings: StudySettings, cell: str, b: dict[str, Any]) -> tuple[int, Path] | None:
    """The best trial's seed and its last checkpoint relative to the study directory (the final
    state of a run that went to the end; Tune keeps the last two), or None where it has none."""
    seed = train_config(b["config"]).seed
    done = sorted(p for _, path in phase_dirs(settings.study_dir, SEARCH)
                  for p in (path / trial_dirname(cell, b["trial_id"])).glob("checkpoint_*/" + TRIAL_STATE))
    if not done:
        return None
    return seed, done[-1].parent.relative_to(settings.study_dir)


class ListSearcher(Searcher):
    """Hands out a fixed list of configs, in order, once each (the replicate phase)."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self.configs, self.next = configs, 0

    def suggest(self, trial_id: str):
        if self.next >= len(self.configs):
            return Searcher.FINISHED
        self.next += 1
        return self.configs[self.next - 1]

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        # Tune renames it into place; fsynced, so the rename never exposes an empty file.
        atomic.write_json(checkpoint_path, {"configs": self.configs, "next": self.next})

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.configs, self.next = state["configs"], state["next"]


def run_replicates(settings, ds, best, experiment_id, out: Output, rnd: int = 1) -> list[dict[str, Any]]:
    """The replicates of each cell's best config; in a later round only what it lacks: every seed
    of a cell that is new or whose best trial changed (its earlier replicates superseded), the
    added seeds of the others. Returns the rows of every round's replicates that count."""
    seeds = {cell: range(settings.replicates) for cell in best}
    if rnd > 1:
        record = read_rounds(settings.study_dir)[rnd - 1]
        rerun = {c for c, b in best.items() if record["previous_best"].get(c) != b["trial_id"]}
        seeds = {cell: range(0 if cell in rerun else record["previous_replicates"], settings.replicates)
                 for cell in best}
        supersede(settings, experiment_id, rnd, rerun)
    configs = []
    for cell, b in best.items():
        reusable = reusable_state(settings, cell, b) if settings.reuse_best_replicate else None
        for r in seeds[cell]:
            configs.append({**b["config"], "phase": "replicate", "replicate": r,
                            "seed": settings.seed + r, "cell": cell})
            if reusable is not None and reusable[0] == settings.seed + r:
                configs[-1]["reused_checkpoint"] = str(reusable[1])
    # The paper's point on the same seeds, those it lacks (tagtune.launch.paper_point).
    done = {(t.config["cell"], t.config["seed"]) for tid, t in replicate_trials(settings, rnd)
            if t.config.get(paper_point.POINT) and t.status != "ERROR"}
    configs += [] if not settings.paper_point else paper_point.configs(
        best, paper_point.paper_trials(settings.study_dir), settings.seed, settings.replicates, done,
        lambda cell, b: reusable_state(settings, cell, b) if settings.reuse_best_replicate else None)
    dirname = phase_dirname(REPLICATE, rnd)

    def make_tuner() -> tune.Tuner:
        return tune.Tuner(
            phase_trainable(settings, ds, dirname),
            tune_config=tune.TuneConfig(metric=metric(settings)[0], mode=metric(settings)[1],
                                        search_alg=ListSearcher(configs),
                                        num_samples=len(configs), reuse_actors=True,
                                        max_concurrent_trials=max_concurrent(settings),
                                        trial_dirname_creator=trial_dirname_of),
            run_config=run_config(settings, dirname, experiment_id, out),
        )

    rows = earlier_replicates(settings, rnd)
    if configs:  # an extension by trials whose best stayed adds no replicate
        results = fit_or_resume(settings, ds, dirname, make_tuner, len(configs), out, experiment_id)
        rows += [replicate_row(r.config, r.metrics or {}, None if r.error is None else str(r.error))
                 for r in results]
    return sorted(rows, key=lambda row: (row["cell"], row["seed"]))


def replicate_row(config: dict, metrics: dict, error: str | None) -> dict[str, Any]:
    return {"cell": config["cell"], "method": config["method"], "missing": config["missing"],
            "seed": config["seed"], "error": None if error is None else error[:200],
            **({"point": config["point"]} if config.get("point") else {}),  # the paper point's
            **{k: v for k, v in metrics.items() if k.startswith(("test", "val/"))}}


def replicate_trials(settings: StudySettings, before: int):
    """Every recorded replicate trial of the rounds before ``before``: (trial id, Tune's trial)."""
    for r, (_, path) in enumerate(phase_dirs(settings.study_dir, REPLICATE), start=1):
        if r < before and path.is_dir():
            for trial in analysis(path).trials:
                yield trial.trial_id, trial


def earlier_replicates(settings: StudySettings, rnd: int) -> list[dict[str, Any]]:
    gone = superseded(settings.study_dir)
    return [replicate_row(t.config, t.last_result or {}, "ERROR" if t.status == "ERROR" else None)
            for tid, t in replicate_trials(settings, rnd) if tid not in gone]


def supersede(settings: StudySettings, experiment_id: str, rnd: int, cells: set[str]) -> None:
    """The earlier replicates of ``cells`` (whose best config changed) no longer count: listed in
    the round's record (the analysis leaves them out) and tagged in MLflow, otherwise unchanged."""
    rounds = read_rounds(settings.study_dir)
    record = rounds[rnd - 1]
    gone = sorted(set(record.get("superseded", [])) | {
        tid for tid, t in replicate_trials(settings, rnd) if t.config["cell"] in cells
        and not t.config.get(paper_point.POINT)  # the paper point did not change
        and tid not in superseded(settings.study_dir)})
    if gone != record.get("superseded", []):
        record["superseded"] = gone
        atomic.write_json(settings.study_dir / ROUNDS, rounds, indent=2)
    # Again on a resume (idempotent): a kill may have cut the tagging short.
    tag_trials(settings.study_dir, settings.tracking_uri, experiment_id, gone,
               {SUPERSEDED_TAG: "true"})
