"""The analysis in the study's MLflow experiment: one run named ``analysis`` (tag
phase=analysis) holding the figures, the table and the report as artifacts.

Idempotent: the run is found again by its tag, so analysing a study twice updates the same
run (files of the same name are replaced) instead of adding a second one. MLflow being
unreachable does not fail the analysis: the report says the figures were not logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tagtune.study import folder

log = logging.getLogger(__name__)
PHASE = "analysis"
# The tag MLflow 3's UI reads to tell a model-training experiment from a GenAI one (without it
# the UI opens on its GenAI overview); the study's experiment and one made here both carry it.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


@dataclass
class Logged:
    run_id: str | None
    note: str
    """Where the artifacts went, or why they did not."""


def tracking_uri(study_dir: Path, settings, override: str | None) -> str | None:
    """--mlflow-uri, else the study's own store (settings, or mlflow.db in the directory:
    None where the study never made one)."""
    if override:
        return override
    if settings.mlflow_uri or (study_dir / folder.MLFLOW_DB).is_file():
        return folder.tracking_uri(study_dir, settings.mlflow_uri)
    return None


def analysis_run(client, experiment_id: str) -> str:
    """The experiment's analysis run: found by its tag, created the first time."""
    found = client.search_runs([experiment_id], filter_string=f"tags.phase = '{PHASE}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=PHASE, tags={"phase": PHASE})
    return run.info.run_id


def log_analysis(uri: str | None, experiment: str, files: dict[str, list[Path]],
                 params: dict[str, str]) -> Logged:
    """Log ``files`` ({artifact folder: paths}) into the analysis run, ``params`` as its
    ``analysis.*`` tags."""
    if uri is None:
        return Logged(None, "no MLflow store found (no mlflow.db, no --mlflow-uri): not logged")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp else client.create_experiment(
            experiment, tags=dict([EXPERIMENT_KIND]))
        run_id = analysis_run(client, experiment_id)
        for k, v in params.items():  # tags, not params: a re-analysis may change them
            client.set_tag(run_id, f"analysis.{k}", v)
        for folder, paths in files.items():
            for p in paths:
                client.log_artifact(run_id, str(p), artifact_path=folder or None)
        client.set_terminated(run_id, "FINISHED")
    except Exception as e:  # any MLflow/store failure: the files on disk are the result
        reason = " ".join(str(e).split())[:200]
        log.warning("analysis not logged to MLflow (%s)", reason)
        return Logged(None, f"not logged to MLflow at {uri} ({reason})")
    return Logged(run_id, f"MLflow run {run_id} (name {PHASE!r}) in experiment {experiment!r} "
                          f"at {uri}")


__all__ = ["Logged", "PHASE", "analysis_run", "log_analysis", "tracking_uri"]
