"""What a study's search optimises: one named place (the scheduler and the searcher get it from
Tune's TuneConfig, where the launch sets it; the analysis reads the same key from the trials)."""

from __future__ import annotations

METRIC, MODE = "val/best_loss", "min"

__all__ = ["METRIC", "MODE"]
