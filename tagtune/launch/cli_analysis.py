"""``tagtune analyze`` (a study's table, figures, statistics and report) and
``tagtune export-best`` (its best configs as runnable YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tagtune.launch.cli_common import user_errors

app = typer.Typer()  # added to the `tagtune` command by tagtune.launch.cli


@app.command("analyze")
@user_errors
def analyze(
    study_dir: Annotated[Path, typer.Argument(
        metavar="STUDY_DIR", help="The study directory (holds study.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default STUDY_DIR/analysis).")] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the study.")] = None,
    metric: Annotated[str | None, typer.Option(
        help="Headline test metric, e.g. test/f1_macro (default: on SONYC-UST the official DCASE macro "
             "AUPRC; else F1 macro, over the full truth where the data has it).")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log figures and report to MLflow.")] = True,
) -> None:
    """Analyse a finished or partial study: table, figures, statistics, best configs, report."""
    from tagtune.analysis import analyze as run_analysis

    r = run_analysis(study_dir, out=out, mlflow_uri=mlflow_uri, metric=metric, log_mlflow=mlflow)
    answer = r.answer_text()
    if answer:  # the answer first: per proportion the best method, by how much, clear?
        print(answer_title(r.metric))
        print(answer)
    for line in r.conclusions:  # what the answer rests on, before where the files are
        print(f"- {line}")
    if answer or r.conclusions:
        print()
    print(f"report:   {r.report}")
    print(f"table:    {', '.join(str(p) for p in r.table_files)}")
    if r.side_by_side_file is not None:  # the headline alone can hide a method that ranks well
        print(f"metrics:  {r.side_by_side_file} (F1 at 0.5, F1 with tuned thresholds, mAP)")
    print(f"figures:  {r.out_dir / 'figures'} ({len(r.figures)})")
    if r.best_dir is not None:
        print(f"configs:  {r.best_dir}")
    print(f"tracking: {r.mlflow_note}")
    for line in r.missing:
        print(f"missing:  {line}")


def answer_title(metric: str) -> str:
    """The answer table's title line, as the demo words it."""
    from tagtune.analysis.stats import metric_label

    return (f"the answer, {metric_label(metric)} on the replicates (per proportion removed: the "
            f"best method, its margin over the baseline, clear after Holm?):")


@app.command("export-best")
@user_errors
def export_best(
    study_dir: Annotated[Path, typer.Argument(
        metavar="STUDY_DIR", help="The study directory (holds study.yaml).")],
    out: Annotated[Path, typer.Option(help="Folder for the YAML files.")],
) -> None:
    """Write each cell's best config as YAML runnable with `tagtune train --config FILE`."""
    from tagtune.analysis import export_best as run_export

    for path in run_export(study_dir, out):
        print(path)
