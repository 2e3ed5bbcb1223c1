"""What a study found: a tidy results table, figures, statistics, exported best configs and
a report, read from the files a study wrote (never by starting Ray).

``analyze(study_dir, out=None, mlflow_uri=None, metric=None) -> AnalysisResult`` is the
plain function under ``tagtune analyze``; ``export_best(study_dir, out)`` under
``tagtune export-best``.
"""

from tagtune.analysis.export import export_best
from tagtune.analysis.pipeline import AnalysisResult, analyze

__all__ = ["AnalysisResult", "analyze", "export_best"]
