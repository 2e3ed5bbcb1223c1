"""One training run from a data file to a directory of results: what ``tagtune train`` does.

``out_dir`` receives:
- ``config.yaml``: the resolved config (``from_dict(TrainConfig, yaml.safe_load(...))``
  rebuilds it);
- ``history.json``: the per-epoch logs (nan written as null);
- ``metrics.json``: validation and test metrics of the selected model, and its epoch;
- ``model.pt``: the selected model's state (MT: the teacher), its config and shapes;
- ``predictions.npz``: ``keys`` and ``scores`` (clip probabilities) of the test clips,
  and ``classes``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tagtune.study import atomic, methods
from tagtune.study.atomic import atomic_path
from tagtune.study.config import TrainConfig, output_dir, to_dict
from tagtune.study.data import load
from tagtune.study.fit.train import evaluate_fit, fit


def train_run(data_path: str | Path, cfg: TrainConfig, out_dir: str | Path,
              progress: bool = False) -> dict[str, Any]:
    """Load ``data_path``, fit ``cfg``, write the results into ``out_dir``; the final metrics."""
    ds = load(data_path)
    out = output_dir(out_dir)  # before the fit: a wrong --out must not cost a training run
    atomic.write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    stages = len(methods.stages(cfg.method))
    if progress:
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task(f"{cfg.method} on {ds.name}", total=cfg.epochs * stages)

            def on_epoch(logs: dict, save) -> None:
                bar.update(task, completed=logs["epoch"],
                           description=f"{cfg.method} {logs['stage']} val/loss {logs['val/loss']:.4f}")

            result = fit(ds, cfg, on_epoch=on_epoch)
    else:
        result = fit(ds, cfg)

    metrics = {**evaluate_fit(result, ds), "best/epoch": result.best["epoch"]}
    _write_json(out / "history.json", result.history)
    _write_json(out / "metrics.json", metrics)
    state = {k: v.cpu() for k, v in result.model.state_dict().items()}  # loadable without a GPU
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"state_dict": state, "config": to_dict(cfg),
                    "n_features": ds.train.F, "classes": list(ds.classes)}, tmp)
    with atomic_path(out / "predictions.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=ds.test.keys, scores=result.predict(ds.test.X), classes=np.array(ds.classes))
    return metrics


def _write_json(path: Path, value: Any) -> None:
    """Strict JSON: nan (a metric with no observed positive) becomes null."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and math.isnan(v) else v

    atomic.write_text(path, json.dumps(clean(value), indent=1, allow_nan=False) + "\n")


__all__ = ["train_run"]
