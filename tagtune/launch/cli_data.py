"""``tagtune data ...``: convert the real releases, generate synthetic data, describe a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pandas.api.types import is_numeric_dtype
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tagtune.launch.cli_common import user_errors
from tagtune.study import data
from tagtune.study.data.describe import class_table, split_table

data_app = typer.Typer(no_args_is_help=True, help="Read, convert, generate and describe datasets.")
convert_app = typer.Typer(no_args_is_help=True, help="Convert a dataset release to tagtune's generic file.")
data_app.add_typer(convert_app, name="convert")


def _save(ds: data.Dataset, out: Path) -> None:
    data.save(ds, out)
    print(f"wrote {out} ({ds.name}, fingerprint {ds.fingerprint})")


@convert_app.command("openmic")
@user_errors
def convert_openmic(
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="OpenMIC-2018 release directory.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output file (.h5 or .npz).")],
    split: Annotated[int, typer.Option(help="Partition number (split01 = 1).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the 15% validation draw from train.")] = 0,
) -> None:
    """OpenMIC-2018 -> generic file."""
    from tagtune.study.data.openmic import read_openmic

    ds = read_openmic(root, split=split, seed=seed)
    _save(ds, out)


@convert_app.command("sonyc")
@user_errors
def convert_sonyc(
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="SONYC-UST v2 release directory.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output file (.h5 or .npz).")],
    level: Annotated[str, typer.Option(help="Taxonomy level: fine (23 tags) or coarse (8).")] = "fine",
    features_dir: Annotated[Path | None, typer.Option(
        help="Per-clip embeddings <key>.npz (default: features/, openl3/ or embeddings/ in ROOT).")] = None,
) -> None:
    """SONYC-UST v2 -> generic file."""
    from tagtune.study.data.sonyc import read_sonyc

    ds = read_sonyc(root, level=level, features_dir=features_dir)
    _save(ds, out)


@data_app.command("synth")
@user_errors
def synth(
    out: Annotated[Path, typer.Option(help="Output file (.h5 or .npz).")],
    preset: Annotated[str, typer.Option(help="openmic-like or sonyc-like.")] = "openmic-like",
    seed: Annotated[int, typer.Option(help="Seed of the generative process.")] = 0,
    n_clips: Annotated[int | None, typer.Option(help="Total clips (default: the real dataset's).")] = None,
    observed: Annotated[float | None, typer.Option(help="Target observed fraction of train labels.")] = None,
) -> None:
    """Generate synthetic partially labeled data with complete ground truth."""
    from tagtune.study.data.synth import synthesize

    ds = synthesize(preset, seed=seed, n_clips=n_clips, observed=observed)
    _save(ds, out)


@data_app.command("describe")
@user_errors
def describe(path: Annotated[Path, typer.Argument(
        metavar="PATH", help="A generic file (.h5 or .npz).")]) -> None:
    """Per split N/T/F/C; per class the observed fraction and the positive count."""
    ds = data.load(path)
    console = Console()
    console.print(Text.assemble((ds.name, "bold"), f" from {ds.source} - {ds.observation} labels, "
                                f"{len(ds.classes)} classes, fingerprint {ds.fingerprint}"),
                  soft_wrap=True)
    console.print(_rich(split_table(ds), "splits"))
    # One narrow table per split: a class x split pivot does not fit 80 columns.
    classes = class_table(ds)
    for name in data.SPLITS:
        rows = classes[classes["split"] == name].drop(columns="split").dropna(axis=1, how="all")
        console.print(_rich(rows, f"{name}: classes"))


def _rich(df, title: str) -> Table:
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col), justify="right" if is_numeric_dtype(df[col]) else "left",
                         no_wrap=True)
    for row in df.itertuples(index=False):
        # Text, not markup: a class name such as "[/]" must print as itself.
        table.add_row(*(Text(f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row))
    return table
