"""``tagtune train``: one run of one method on one data file.

The config is resolved in layers, each overriding the one before: TrainConfig's
defaults, ``--preset``, the ``--config`` YAML file, then the flags given. ``openmic`` and
``sonyc`` are the paper's settings on tagtune's default network; ``openmic-paper`` and
``sonyc-paper`` its exact setup as its code ran it (its network, MT's EMA warm-up and
student, lr halved every 30 of 100 epochs, and the run script's lr of the method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tagtune.launch.cli_common import user_errors
from tagtune.study.config import ConfigError, TrainConfig, from_dict, preset_config, replace, to_dict

app = typer.Typer()  # added to the `tagtune` command by tagtune.launch.cli

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
    model_flags = {k: flags.pop(k) for k in ("layers", "hidden", "dropout", "arch") if k in flags}
    d = _merged(d, {k: v for k, v in flags.items() if v is not None})
    d = _merged(d, {"model": {k: v for k, v in model_flags.items() if v is not None}})
    return from_dict(TrainConfig, d)


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


@app.command("train")
@user_errors
def train(
    data: Annotated[Path, typer.Option(help="A generic data file (.h5 or .npz).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    method: Annotated[str | None, typer.Option(help="b0, b1, le or mt.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of TrainConfig fields.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="openmic or sonyc: the paper's settings; openmic-paper or sonyc-paper: its exact setup "
             "(network, MT schedule, per-method lr).")] = None,
    gamma: Annotated[float | None, typer.Option(help="LE percentile, 0-100.")] = None,
    alpha: Annotated[float | None, typer.Option(help="MT teacher EMA decay, [0, 1).")] = None,
    beta: Annotated[float | None, typer.Option(help="MT consistency weight, >= 0.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per stage.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clips per step.")] = None,
    rampup_epochs: Annotated[int | None, typer.Option(help="MT ramp-up of beta (0: none).")] = None,
    ema_warmup: Annotated[bool | None, typer.Option(
        "--ema-warmup/--no-ema-warmup", help="MT: EMA decay min(1 - 1/(t+1), alpha) (default on).")] = None,
    mt_select: Annotated[str | None, typer.Option(
        help="MT: the network selected and exported, teacher or student.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience.")] = None,
    missing: Annotated[float | None, typer.Option(help="Remove this share of train labels.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    device: Annotated[str | None, typer.Option(
        help="cpu (the default), cuda, or auto (the GPU when torch sees one).")] = None,
    deterministic: Annotated[bool | None, typer.Option(
        "--deterministic/--no-deterministic",
        help="torch's deterministic algorithms: GPU results repeat bitwise (slower).")] = None,
    layers: Annotated[int | None, typer.Option(help="Model: embedding layers L.")] = None,
    hidden: Annotated[int | None, typer.Option(help="Model: layer width H.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Model: dropout rate.")] = None,
    arch: Annotated[str | None, typer.Option(
        help="Model: residual (tagtune's) or paper (the paper's code's; hidden = F).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one method on one data file; write config, history, metrics, model, predictions."""
    from tagtune.study.device import resolve as resolve_device
    from tagtune.study.run import train_run

    cfg = resolve_config(preset, config, method=method, gamma=gamma, alpha=alpha, beta=beta, lr=lr,
                         epochs=epochs, batch_size=batch_size, rampup_epochs=rampup_epochs,
                         ema_warmup=ema_warmup, mt_select=mt_select, arch=arch,
                         patience=patience, missing=missing, seed=seed, threads=threads,
                         device=device, deterministic=deterministic,
                         layers=layers, hidden=hidden, dropout=dropout)
    # Before the data is read: a missing GPU is a one-line error, not a failed run. config.yaml
    # records where it ran (auto resolved).
    cfg = replace(cfg, device=resolve_device(cfg.device).type)
    metrics = train_run(data, cfg, out, progress=progress)
    shown = ("best/epoch", "test/f1_macro", "test/auprc_micro", "test/auprc_macro")
    print("  ".join(f"{k} {metrics[k]:.4g}" for k in shown) + f"  -> {out}")
