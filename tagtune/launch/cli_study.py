"""``tagtune study`` (run / resume a study) and ``tagtune mlflow sync``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tagtune.launch.cli_common import fail, user_errors
from tagtune.launch.preflight import token_auth_mode
from tagtune.study.config import ConfigError

# Both added to the `tagtune` command by tagtune.launch.cli.
study_app = typer.Typer(help="Run a study: every (method, proportion) cell searched, then replicated.")
mlflow_app = typer.Typer(no_args_is_help=True, help="MLflow store of a study.")


# As the README's cluster section says it (tagtune study --address HEAD_IP:6379).
ADDRESS_HELP = ("Ray cluster: HEAD_IP:6379 (the head's address), auto (the `ray start` cluster on "
                "this machine) or ray://HEAD_IP:10001 (Ray Client); default: a fresh local Ray.")


def _default(name: str) -> str:
    """`` (default X).``: the StudySettings field's default as the help shows it (the option's own
    default is None: a flag not given leaves study.yaml's value, or this one)."""
    from dataclasses import MISSING, fields

    from tagtune.study.folder import StudySettings

    value = next(f.default for f in fields(StudySettings) if f.name == name)
    assert value is not MISSING, name
    if isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, tuple):
        text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f" (default {text})."


def _flag_errors(given: dict, settings_from):
    """``settings_from()``, a ConfigError on a field given as a flag re-raised naming the flag
    (``--missing``, not the study's field ``missing``)."""
    try:
        return settings_from()
    except ConfigError as e:
        if given.get(e.field) is None:
            raise
        problem = str(e).split(f": {e.field}: ", 1)[-1]
        raise ConfigError(f"--{e.field.replace('_', '-')}", problem, where="command line") from None


def _csv(text: str | None, cast=str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise ConfigError("list", f"cannot read {text!r} ({e})", where="command line") from None


@study_app.callback(invoke_without_command=True)
@user_errors
def study(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Generic data file (.h5/.npz).")] = None,
    methods: Annotated[str | None, typer.Option(
        help="Comma list of b0,b1,le,mt,lemt,llr,hill,splc,pbce,wan,epr (default: all).")] = None,
    missing: Annotated[str | None, typer.Option(
        help="Comma list of proportions of training labels removed" + _default("missing"))] = None,
    trials: Annotated[int | None, typer.Option(help="Optuna trials per cell" + _default("trials"))] = None,
    replicates: Annotated[int | None, typer.Option(
        help="Seeds per cell's best config" + _default("replicates"))] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs per trial (per LE stage); the scheduler's max" + _default("epochs"))] = None,
    objective: Annotated[str | None, typer.Option(
        help="What the search and model selection optimise: val/loss, val/auprc_macro or "
             "val/f1_macro_tuned (docs/study.md)" + _default("objective"))] = None,
    rerank: Annotated[int | None, typer.Option(
        help="Retrain each cell's top N trials on extra seeds and choose the best mean validation "
             "score; 0 or 1: the single best run (docs/study.md)" + _default("rerank"))] = None,
    rerank_seeds: Annotated[int | None, typer.Option(
        help="Extra seeds of each re-ranked trial" + _default("rerank_seeds"))] = None,
    name: Annotated[str | None, typer.Option(
        help="Study name (directory, MLflow experiment)" + _default("name"))] = None,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    storage: Annotated[str | None, typer.Option(
        help="Where studies live (shared on a cluster)" + _default("storage"))] = None,
    cpus_per_trial: Annotated[int | None, typer.Option(
        help="CPUs per trial" + _default("cpus_per_trial"))] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(
        help="GPUs per trial; a fraction shares one (0.25: four trials a GPU)"
        + _default("gpus_per_trial"))] = None,
    fuse: Annotated[str | None, typer.Option(
        help="Train up to N trials of a cell as one stacked network (fused), or auto; 1: off"
        + _default("fuse"))] = None,
    mlflow_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: mlflow.db in the study directory).")] = None,
    grace_period: Annotated[int | None, typer.Option(
        help="ASHA grace period in epochs (default: 5, or the epochs if fewer).")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the searchers and replicates" + _default("seed"))] = None,
    preset: Annotated[str | None, typer.Option(
        help="Paper settings: openmic, sonyc; openmic-paper, sonyc-paper: the paper's exact setup"
        + _default("preset"))] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        help="Checkpoint every N epochs" + _default("checkpoint_every"))] = None,
    checkpoint_s: Annotated[float | None, typer.Option(
        help="...but a trial's checkpoints at least S seconds apart (0: every N epochs)"
        + _default("checkpoint_s"))] = None,
    max_failures: Annotated[int | None, typer.Option(
        help="Retries of a trial whose worker died" + _default("max_failures"))] = None,
    search_space: Annotated[Path | None, typer.Option(
        help="YAML with a search: mapping of ranges (default: tagtune.search_spaces' default.yaml).")] = None,
    share_le_teacher: Annotated[bool | None, typer.Option(
        help="LE: one stage-1 teacher per (data, proportion, seed), the paper's lr"
        + _default("share_le_teacher"))] = None,
    paper_point: Annotated[bool | None, typer.Option(
        "--paper-point/--no-paper-point",
        help="Replicate each cell's paper point on the best config's seeds: the gain of the search"
        + _default("paper_point"))] = None,
    reuse_best_replicate: Annotated[bool | None, typer.Option(
        help="The best search trial stands in for its seed's replicate (one fewer to train)"
        + _default("reuse_best_replicate"))] = None,
    config: Annotated[Path | None, typer.Option(help="study.yaml (settings + search ranges).")] = None,
    quiet: Annotated[bool, typer.Option(help="Nothing but errors and the closing summary.")] = False,
    verbose: Annotated[bool, typer.Option(
        help="Ray Tune's trial table and Ray's/Optuna's log lines instead of the live display.")] = False,
) -> None:
    """Run a study (or `tagtune study resume DIR`).

    The terminal shows one live display (trials done / running / pending, each cell's best validation loss, time left); Ray's, Tune's and Optuna's log lines go to STUDY_DIR/study.log.
    """  # noqa: E501 -- one line: Typer keeps a line break inside a paragraph
    if ctx.invoked_subcommand is not None:
        return
    from tagtune.study.folder import StudySettings, load_settings

    overrides = {
        "data": str(data.absolute()) if data else None, "methods": _csv(methods),
        "missing": _csv(missing, float), "trials": trials, "replicates": replicates, "epochs": epochs,
        "objective": objective, "rerank": rerank, "rerank_seeds": rerank_seeds,
        "name": name, "address": address or os.environ.get("RAY_ADDRESS"), "storage": storage,
        "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial, "mlflow_uri": mlflow_uri,
        "grace_period": grace_period, "fuse": fuse,
        "seed": seed, "preset": preset, "checkpoint_every": checkpoint_every,
        "checkpoint_s": checkpoint_s, "max_failures": max_failures, "share_le_teacher": share_le_teacher,
        "reuse_best_replicate": reuse_best_replicate, "paper_point": paper_point,
        "search_space": str(search_space.absolute()) if search_space else None,
    }
    if config is not None:
        settings = _flag_errors(overrides, lambda: load_settings(config, **overrides))
    else:
        if data is None:
            raise fail("study: --data is required (or --config)")
        settings = _flag_errors(overrides, lambda: StudySettings(
            **{k: v for k, v in overrides.items() if v is not None}))
    level = _verbosity(quiet, verbose)
    token_auth_mode(settings.address)  # before Ray is imported (below)
    from tagtune.launch.study import run_study

    # say_plan: what it will run, and roughly how long, before any trial starts
    _report(settings.study_dir, run_study, settings, verbose=level, say_plan=level > 0)


def _saved_address(study_dir: Path) -> str | None:
    """The address in a study's study.yaml (None where it has none or cannot be read: the study's
    own loading says why, later)."""
    from tagtune.study.folder import load_study

    try:
        return load_study(study_dir).address
    except (ConfigError, OSError):
        return None


@study_app.command("resume")
@user_errors
def resume(
    study_dir: Annotated[Path, typer.Argument(metavar="STUDY_DIR", help="The study directory.")],
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    quiet: Annotated[bool, typer.Option(help="Nothing but errors and the closing summary.")] = False,
    verbose: Annotated[bool, typer.Option(
        help="Ray Tune's trial table and Ray's/Optuna's log lines instead of the live display.")] = False,
) -> None:
    """Continue an interrupted study; finished trials are neither rerun nor logged twice."""
    address = address or os.environ.get("RAY_ADDRESS")
    token_auth_mode(address or _saved_address(study_dir))  # before Ray is imported (below)
    from tagtune.launch.study import resume_study

    _report(study_dir, resume_study, study_dir, verbose=_verbosity(quiet, verbose), address=address)


@study_app.command("extend")
@user_errors
def extend(
    study_dir: Annotated[Path, typer.Argument(metavar="STUDY_DIR", help="The finished study directory.")],
    methods: Annotated[str | None, typer.Option(help="Comma list of methods to add.")] = None,
    missing: Annotated[str | None, typer.Option(help="Comma list of proportions to add.")] = None,
    trials: Annotated[int | None, typer.Option(help="Optuna trials per cell, in all.")] = None,
    replicates: Annotated[int | None, typer.Option(help="Seeds per cell's best config, in all.")] = None,
    data: Annotated[Path | None, typer.Option(help="The study's data file, if it moved.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Must be the study's (refused otherwise).")] = None,
    config: Annotated[Path | None, typer.Option(help="study.yaml with the same fields.")] = None,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
    quiet: Annotated[bool, typer.Option(help="Nothing but errors and the closing summary.")] = False,
    verbose: Annotated[bool, typer.Option(
        help="Ray Tune's trial table and Ray's/Optuna's log lines instead of the live display.")] = False,
) -> None:
    """Grow a finished study: new methods, proportions, trials or replicates, as one study with the union of the settings would have run them; nothing finished runs again."""  # noqa: E501
    token_auth_mode(address or os.environ.get("RAY_ADDRESS") or _saved_address(study_dir))  # before Ray
    from tagtune.launch.extend import extend_study

    _report(study_dir, extend_study, study_dir, config=config, verbose=_verbosity(quiet, verbose),
            methods=_csv(methods), missing=_csv(missing, float), trials=trials,
            replicates=replicates, data=str(data.absolute()) if data else None, epochs=epochs,
            address=address or os.environ.get("RAY_ADDRESS"))


@mlflow_app.command("sync")
@user_errors
def mlflow_sync(study_dir: Annotated[Path, typer.Argument(
        metavar="STUDY_DIR", help="The study directory.")]) -> None:
    """Replay the study's tracking journal into its MLflow store (after an outage)."""
    from tagtune.launch.preflight import check_mlflow, quick_mlflow_http
    from tagtune.launch.study import study_trial_ids
    from tagtune.launch.tracking import mlflow_experiment, sync
    from tagtune.study.folder import load_study

    settings = load_study(study_dir)
    check_mlflow(settings.tracking_uri)
    with quick_mlflow_http():
        experiment_id = mlflow_experiment(settings.tracking_uri, settings.name, settings.study_dir)
        n = sync(settings.study_dir, settings.tracking_uri, experiment_id,
                 study_trial_ids(settings.study_dir))
    print(f"replayed {n} events into {settings.tracking_uri}")


def _verbosity(quiet: bool, verbose: bool) -> int:
    if quiet and verbose:
        raise fail("study: --quiet and --verbose exclude each other")
    return 0 if quiet else 2 if verbose else 1


def _report(study_dir: Path, run, *args, **kwargs) -> None:
    """Run a study function and print where its results are; Ctrl-C: how to go on, exit 130."""
    from tagtune.launch.study import StudyInterrupted

    try:
        result = run(*args, **kwargs)
    except StudyInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's run: its last saved state
        print(f"interrupted: {study_dir}: continue with: tagtune study resume {study_dir}",
              file=sys.stderr)
        raise typer.Exit(code=130) from None
    _print_result(result)


def _print_result(result) -> None:
    from tagtune.study.folder import BEST

    out = sys.stdout
    print(f"study:     {result.study_dir}", file=out)
    print(f"best:      {result.study_dir / BEST}", file=out)
    print(f"mlflow:    {result.tracking_uri} (experiment {result.experiment_id})", file=out)
    if not result.mlflow_synced:
        print(f"warning: MLflow did not answer at the end; once it is back run: "
              f"tagtune mlflow sync {result.study_dir}", file=sys.stderr)
    print(f"log:       {result.study_dir / 'study.log'}", file=out)
    print(f"open UI:   tagtune ui {result.study_dir}  (add --optuna for Optuna's dashboard)", file=out)
    print(f"analyze:   tagtune analyze {result.study_dir}", file=out)
