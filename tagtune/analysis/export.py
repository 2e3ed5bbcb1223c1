"""Each cell's best config as a YAML file that ``tagtune train --config FILE`` runs as is.

The file holds the full resolved TrainConfig of the search trial the study retrained (the
study's own keys, cell/phase/checkpoint_every, stripped by ``train_config``), with the seed
of replicate 0. Replicate r of the study used seed ``settings.seed + r``: training the file
with ``--seed`` set to it, on the same data, reproduces that replicate's test metrics (the
fit loop is deterministic on CPU). A comment block at the top says so and lists the
replicates' results. The combined file gathers every cell, for reading, not for training.
LE's shared teacher is covered: its lr is the config's ``le_teacher_lr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tagtune.analysis.table import StudyFiles, best_configs, headline_metric, open_study, trials_table
from tagtune.study import atomic
from tagtune.study.config import ConfigError, output_dir, to_dict
from tagtune.study.folder import BEST, cell_stem, train_config

COMBINED = "best-configs.yaml"


def cell_filename(cell: str) -> str:
    """``mt@0.40`` -> ``mt_0.40.yaml`` (no '@' in file names handed to shells)."""
    return cell_stem(cell) + ".yaml"


def exported_config(best: dict[str, Any], seed: int) -> dict[str, Any]:
    """The TrainConfig dict of a best.json entry, with ``seed``."""
    return to_dict(train_config({**best["config"], "seed": seed}))


def _header(study: StudyFiles, cell: str, b: dict, reps: pd.DataFrame, metric: str) -> str:
    s = study.settings
    lines = [
        f"tagtune: best config of cell {cell} in study {s.name!r} "
        f"(search trial {b['trial_id']}, validation loss {b['value']:.6g})",
        f"data: {s.data}",
        f"replicate r used seed {s.seed} + r; reproduce one with:",
        f"  tagtune train --config {cell_filename(cell)} --data DATA --out OUT --seed SEED",
    ]
    done = reps[reps["cell"] == cell].sort_values("seed")
    if len(done) and metric in done:
        results = ", ".join(f"seed {int(r['seed'])}: {r[metric]:.6f}" for _, r in done.iterrows())
        lines.append(f"replicates' {metric}: {results}")
    return "".join(f"# {line}\n" for line in lines)


def write_best(study: StudyFiles, table: pd.DataFrame, out: str | Path,
               metric: str | None = None) -> list[Path]:
    """Write one YAML per cell with a best config, then the combined file; their paths."""
    best = best_configs(study, table)
    if not best:
        raise ConfigError(BEST, "no cell has a trial that ran to the end: nothing to export",
                          where=str(study.dir))
    out = output_dir(out)
    metric = metric or headline_metric(table)
    reps = table[(table["phase"] == "replicate") & (table["status"] == "complete")]
    seed = study.settings.seed
    paths, combined = [], {}
    for cell in [c for c in study.cells if c in best]:
        config = exported_config(best[cell], seed)
        path = out / cell_filename(cell)
        atomic.write_text(path, _header(study, cell, best[cell], reps, metric)
                          + yaml.safe_dump(config, sort_keys=False))
        paths.append(path)
        # The best trial's score under the study's objective (val/loss in studies from before it).
        combined[cell] = {"selection_score": best[cell]["value"], "objective": study.settings.objective,
                          "search_trial": best[cell]["trial_id"], "file": path.name,
                          "replicate_seeds": [seed + r for r in range(study.settings.replicates)],
                          "config": config}
    doc = {"study": study.settings.name, "data": study.settings.data, "cells": combined}
    path = out / COMBINED
    path.write_text("# Every cell's best config (for reading; train one with its own file).\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return [*paths, path]


def export_best(study_dir: str | Path, out: str | Path, metric: str | None = None) -> list[Path]:
    """``tagtune export-best``: the study's best configs as runnable YAML files in ``out``."""
    study = open_study(study_dir)
    return write_best(study, trials_table(study), out, metric)


__all__ = ["COMBINED", "cell_filename", "export_best", "exported_config", "write_best"]
