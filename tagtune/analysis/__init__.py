"""What a study found: a tidy results table, figures, statistics, exported best configs and
a report, read from the files a study wrote (never by starting Ray).

``analyze(study_dir, out=None, mlflow_uri=None, metric=None) -> AnalysisResult`` is the
plain function under ``tagtune analyze``; ``export_best(study_dir, out)`` under
``tagtune export-best``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tagtune.analysis.export import export_best
    from tagtune.analysis.pipeline import AnalysisResult, analyze

# Imported when first named: a study's driver imports a few of this package's modules (gain,
# export), and the pipeline's figures would bring matplotlib with them (~0.3-0.6 s of its start).
_LAZY = {"analyze": "tagtune.analysis.pipeline", "AnalysisResult": "tagtune.analysis.pipeline",
         "export_best": "tagtune.analysis.export"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AnalysisResult", "analyze", "export_best"]
