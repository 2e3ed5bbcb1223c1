"""The re-rank phase (setting ``rerank: K``, K >= 2): each cell's best config chosen on more than
one seed.

With few observed validation labels, the best of a cell's search runs is partly the luckiest seed.
After the search, each cell's top K complete trials (by the objective's score of their search run)
are retrained on ``rerank_seeds`` extra seeds, seed + RERANK_SEED + j: never a replicate's seed
(seed + r), so the replicates still test the chosen config on seeds nothing was chosen on. The
cell's best config is the one with the best MEAN score over its search run and those seeds
(tagtune.study.objective.rerank_choice); best.json records the candidates' scores and which won.

A Tune phase like the replicate phase (a ListSearcher of configs, fit_or_resume): killed, it
resumes. In a later round (an extended study) only the (trial, seed) runs no earlier round's
re-rank ran are trained.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ray import tune

from tagtune.launch.counts import analysis, ranked_per_cell
from tagtune.launch.objective import metric
from tagtune.launch.phase import fit_or_resume
from tagtune.launch.ray_start import max_concurrent
from tagtune.launch.replicates import ListSearcher
from tagtune.launch.wiring import Output, phase_trainable, run_config, trial_dirname_of
from tagtune.study import objective as objectives
from tagtune.study.folder import RERANK, RERANK_SEED, StudySettings, phase_dirname, round_count

log = logging.getLogger(__name__)

REF = "rerank_of"
"""The trial config key naming the search trial a re-rank run retrains (folder.STUDY_KEYS has it)."""


def seeds(settings: StudySettings) -> list[int]:
    return [settings.seed + RERANK_SEED + j for j in range(settings.rerank_seeds)]


def rerank_dirs(settings: StudySettings, before: int | None = None) -> list:
    """Every round's re-rank experiment directory (those before round ``before`` if given)."""
    n = round_count(settings.study_dir) if before is None else before - 1
    return [settings.study_dir / phase_dirname(RERANK, r) for r in range(1, n + 1)]


def earlier_scores(settings: StudySettings, before: int) -> dict[tuple[str, int], float]:
    """(search trial id, seed) -> the objective's score of the re-rank runs of rounds before
    ``before`` (NaN for one that failed)."""
    key, _ = metric(settings)
    out: dict[tuple[str, int], float] = {}
    for path in rerank_dirs(settings, before):
        for trial in analysis(path).trials if path.is_dir() else ():
            last = trial.last_result or {}
            value = last.get(key, math.nan) if trial.status != "ERROR" else math.nan
            out[(trial.config[REF], trial.config["seed"])] = float(value)
    return out


def choose(candidates: list[dict[str, Any]], scores: dict[tuple[str, int], float],
           extra_seeds: list[int], objective: str) -> dict[str, Any]:
    """The re-rank's record for one cell: each candidate's search score, its extra seeds' scores
    and their mean, and the chosen trial (tagtune.study.objective.rerank_choice)."""
    runs = {c["trial_id"]: [c["value"]] + [scores.get((c["trial_id"], s), math.nan) for s in extra_seeds]
            for c in candidates}
    chosen = objectives.rerank_choice(runs, objective)
    return {"chosen": chosen, "single_best": candidates[0]["trial_id"], "seeds": extra_seeds,
            "candidates": [{"trial_id": tid, "search": v[0], "extra": v[1:],
                            "mean": objectives.mean_score(v)} for tid, v in runs.items()]}


def run_rerank(settings: StudySettings, ds, experiment_id: str, out: Output,
               rnd: int = 1) -> dict[str, dict[str, Any]]:
    """Each cell's best trial chosen by the re-rank (as best_per_cell's entries, with a
    ``rerank`` record added); the re-rank runs it lacks trained first."""
    ranked = ranked_per_cell(settings)
    top = {cell: runs[:settings.rerank] for cell, runs in sorted(ranked.items())}
    extra = seeds(settings)
    scores = earlier_scores(settings, rnd)
    configs = [{**c["config"], "phase": RERANK, REF: c["trial_id"], "seed": s}
               for runs in top.values() if len(runs) > 1 for c in runs for s in extra
               if (c["trial_id"], s) not in scores]
    for c in configs:
        c.pop("optuna_trial", None)  # not the searcher's trial: its run is named by REF
    dirname = phase_dirname(RERANK, rnd)
    key, mode = metric(settings)

    def make_tuner() -> tune.Tuner:
        return tune.Tuner(
            phase_trainable(settings, ds, dirname),
            tune_config=tune.TuneConfig(metric=key, mode=mode, search_alg=ListSearcher(configs),
                                        num_samples=len(configs), reuse_actors=True,
                                        max_concurrent_trials=max_concurrent(settings),
                                        trial_dirname_creator=trial_dirname_of),
            run_config=run_config(settings, dirname, experiment_id, out),
        )

    if configs:  # an extension whose top trials were all re-ranked before adds none
        for r in fit_or_resume(settings, ds, dirname, make_tuner, len(configs), out, experiment_id):
            value = (r.metrics or {}).get(key, math.nan) if r.error is None else math.nan
            scores[(r.config[REF], r.config["seed"])] = float(value)
    best: dict[str, dict[str, Any]] = {}
    for cell, runs in top.items():
        record = choose(runs, scores, extra if len(runs) > 1 else [], settings.objective)
        chosen = next(c for c in runs if c["trial_id"] == record["chosen"])
        best[cell] = {**chosen, "rerank": record}
        if record["chosen"] != record["single_best"]:
            log.info("re-rank: %s's best is trial %s (mean %s over %d seeds), not %s", cell,
                     record["chosen"], key, 1 + len(extra), record["single_best"])
    return best


__all__ = ["REF", "choose", "earlier_scores", "rerank_dirs", "run_rerank", "seeds"]
