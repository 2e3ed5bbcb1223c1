"""``tagtune train``: one run of one method on one data file.

The config is resolved in layers, each overriding the one before: TrainConfig's
defaults, ``--preset``, the ``--config`` YAML file, then the flags given. ``openmic`` and
``sonyc`` are the paper's settings on tagtune's default network; ``openmic-paper`` and
``sonyc-paper`` its exact setup as its code ran it (its network, MT's EMA warm-up and
student, lr halved every 30 of 100 epochs, and the run script's lr of the method).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tagtune.launch.cli_common import user_errors
from tagtune.study.config import ConfigError, TrainConfig, from_dict, preset_config, replace, to_dict
from tagtune.study.methods.registry import METHODS, PARAMS, owners

app = typer.Typer()  # added to the `tagtune` command by tagtune.launch.cli

def _default(name: str) -> str:
    """`` (default X).``: TrainConfig's default (its model's for a model field), which a preset or
    a config file may change; the flag's own default is None (not given)."""
    cfg = TrainConfig()
    value = getattr(cfg.model if hasattr(cfg.model, name) else cfg, name)
    text = "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return f" (default {text}; a --preset or --config may set another)."


def resolve_config(preset: str | None = None, config: Path | None = None,
                   **flags: Any) -> TrainConfig:
    """Defaults < preset < YAML file < flags (a flag of None is not given)."""
    d: dict[str, Any] = to_dict(TrainConfig())
    from_yaml = _read_yaml(config) if config is not None else {}
    method = flags.get("method") if flags.get("method") is not None else from_yaml.get("method")
    if method is None:
        raise ConfigError("method", "not given: use --method or a config file that sets it")
    if preset is not None:  # a -paper preset's lr depends on the method
        d = _merged(d, preset_config(preset, method if isinstance(method, str) else None))
    d = _merged(d, from_yaml)
    if from_yaml:  # the file's own mistakes name the file
        _named(lambda: from_dict(TrainConfig, d), lambda field: str(config), set(from_yaml))
    model_flags = {k: flags.pop(k) for k in ("layers", "hidden", "dropout", "arch") if k in flags}
    given = {k for k, v in {**flags, **model_flags}.items() if v is not None}
    d = _merged(d, {k: v for k, v in flags.items() if v is not None})
    d = _merged(d, {"model": {k: v for k, v in model_flags.items() if v is not None}})
    # A flag's mistake names the flag (--missing, not the config field missing).
    return _named(lambda: from_dict(TrainConfig, d), lambda field: "command line", given, flag=True)


def _named(build: Callable[[], TrainConfig], where: Callable[[str], str], fields: set[str],
           flag: bool = False) -> TrainConfig:
    """``build()``; a ConfigError on one of ``fields`` (a top-level field, or ``model.X`` for X)
    re-raised saying where it came from: the YAML file, or the command line and its flag."""
    try:
        return build()
    except ConfigError as e:
        field = e.field
        top = field.split(".", 1)[0]
        name = field.split(".", 1)[-1] if flag else field  # flags: --hidden for model.hidden
        if top not in fields and name not in fields:
            raise
        problem = str(e).split(f": {field}: ", 1)[-1]
        shown = f"--{name.replace('_', '-')}" if flag else field
        raise ConfigError(shown, problem, where=where(field)) from None


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {**base, **over}
    if isinstance(base.get("model"), dict) and isinstance(over.get("model"), dict):
        out["model"] = {**base["model"], **over["model"]}
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("config", f"no such file {path}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        problem = " ".join(str(e).split())  # one line
        raise ConfigError("config", f"{path} does not parse as YAML: {problem}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError("config", f"{path} must hold a mapping, not {type(d).__name__}")
    return d


def method_flags(command: Callable) -> Callable:
    """``command`` with one option per method parameter (tagtune.study.methods.registry.PARAMS) in
    place of its ``**params``, named and described by the parameter's declaration."""
    sig = inspect.signature(command, eval_str=True)
    # keyword-only, all of them: Typer passes every option by name
    fixed = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD]
    flags = []
    for p in PARAMS.values():
        names = (f"--{p.name.replace('_', '-')}/--no-{p.name.replace('_', '-')}",) if p.kind is bool else ()
        where = ", ".join(owners(p.name))
        default = "none" if p.default is None else str(p.default).lower() if p.kind is bool else p.default
        valid = f"; {p.valid()}" if p.valid() else ""
        option = typer.Option(*names, help=f"{where}: {p.help}{valid} (default {default}).")
        flags.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=Annotated[p.kind | None, option]))
    after = [p.name for p in fixed].index("preset") + 1  # the methods' flags follow --preset
    command.__signature__ = sig.replace(parameters=[*fixed[:after], *flags, *fixed[after:]])
    return command


@app.command("train")
@method_flags
@user_errors
def train(
    data: Annotated[Path, typer.Option(help="A generic data file (.h5 or .npz).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    method: Annotated[str | None, typer.Option(
        help=f"One of {', '.join(METHODS)} (tagtune.study.methods).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of TrainConfig fields.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="openmic or sonyc: the paper's settings; openmic-paper or sonyc-paper: its exact setup "
             "(network, MT schedule, per-method lr).")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate" + _default("lr"))] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs per stage (LE, LE+MT: two stages, teacher then student)" + _default("epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clips per step" + _default("batch_size"))] = None,
    patience: Annotated[int | None, typer.Option(
        help="Early stopping patience in epochs" + _default("patience"))] = None,
    objective: Annotated[str | None, typer.Option(
        help="Model selection keeps the epoch best by: val/loss, val/auprc_macro or val/f1_macro_tuned"
        + _default("objective"))] = None,
    missing: Annotated[float | None, typer.Option(
        help="Remove this share of train labels" + _default("missing"))] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed" + _default("seed"))] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads" + _default("threads"))] = None,
    device: Annotated[str | None, typer.Option(
        help="cpu (the default), cuda, or auto (the GPU when torch sees one).")] = None,
    deterministic: Annotated[bool | None, typer.Option(
        "--deterministic/--no-deterministic",
        help="torch's deterministic algorithms: GPU results repeat bitwise (slower).")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (the default: bf16 where the CPU/GPU has it natively, else fp32), bf16 (mixed: bf16 "
             "matrix products, fp32 weights, losses and metrics) or fp32.")] = None,
    layers: Annotated[int | None, typer.Option(help="Model: embedding layers L" + _default("layers"))] = None,
    hidden: Annotated[int | None, typer.Option(help="Model: layer width H" + _default("hidden"))] = None,
    dropout: Annotated[float | None, typer.Option(help="Model: dropout rate" + _default("dropout"))] = None,
    arch: Annotated[str | None, typer.Option(
        help="Model: residual (tagtune's) or paper (the paper's code's; hidden = F).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    **params: Any,
) -> None:
    """Train one method on one data file; write config, history, metrics, model, predictions."""
    from tagtune.study.fit.run import train_run
    from tagtune.study.nn.device import resolve as resolve_device
    from tagtune.study.nn.precision import resolve as resolve_precision

    # params: the methods' own parameters, one flag each (see method_flags).
    cfg = resolve_config(preset, config, method=method, lr=lr,
                         epochs=epochs, batch_size=batch_size, arch=arch, **params,
                         patience=patience, objective=objective, missing=missing, seed=seed, threads=threads,
                         device=device, deterministic=deterministic, precision=precision,
                         layers=layers, hidden=hidden, dropout=dropout)
    # Before the data is read: a missing GPU is a one-line error, not a failed run. config.yaml
    # records where it ran (auto resolved).
    where = resolve_device(cfg.device)
    cfg = replace(cfg, device=where.type, precision=resolve_precision(cfg.precision, where))  # auto resolved
    metrics = train_run(data, cfg, out, progress=progress)
    shown = ("test/f1_macro", "test/auprc_micro", "test/auprc_macro")
    print(best_epoch_text(cfg, int(metrics["best/epoch"])) + "  "
          + "  ".join(f"{k} {metrics[k]:.4g}" for k in shown) + f"  -> {out}")


def best_epoch_text(cfg: TrainConfig, best: int) -> str:
    """The selected model's epoch as the flags count it: ``--epochs`` is per stage, and a method
    of two stages (LE: a teacher, then the student) counts its epochs across both."""
    from tagtune.study.methods import stages

    names = stages(cfg.method)
    if len(names) == 1:
        return f"best/epoch {best} of {cfg.epochs}"
    stage = min((best - 1) // cfg.epochs, len(names) - 1)
    return (f"best/epoch {best - stage * cfg.epochs} of {cfg.epochs} in stage {names[stage]} "
            f"({len(names)} stages of {cfg.epochs} epochs: epoch {best} of {len(names) * cfg.epochs})")
