"""Commands of the 'augment' area: ISC-style edited training queries with AugLy.

`augment` writes the queries (resumable, parallel, shardable), `augment-merge` joins shard
manifests, `augment-recipe` prints the recipe table that the README documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..configs import AugmentConfig, default
from .app import app
from .common import RECIPE_HELP, SET_HELP, override

MAX_FAILED_SHOWN = 20


@app.command("augment")
def augment(
    images_dir: Path = typer.Argument(..., help="Folder of source images (.jpg/.jpeg/.png), e.g. the training set."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: QUERY.jpg files + manifest.csv."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Recipe seed; same seed, id and copy give the same edit. (default: {default(AugmentConfig, 'seed')})"),
    copies: Optional[int] = typer.Option(None, "--copies", "-k", help=f"Edited copies per image (ids SOURCE_a0, SOURCE_a1, ...). (default: {default(AugmentConfig, 'copies')})"),
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes (the output does not depend on it)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Process only shard I/N of the sorted image list."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero if any image could not be read."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help=f"Longest side of the output images (never enlarged). (default: {default(AugmentConfig, 'max_side')})"),
    quality: Optional[int] = typer.Option(None, "--quality", help=f"JPEG quality of the outputs. (default: {default(AugmentConfig, 'jpeg_quality')})"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP.replace("train.loss.tau=2 --set model.output_l2=true", "augment.copies=8")),
) -> None:
    """Write K randomly edited copies of every image (ISC-like query edits) plus a manifest."""
    from ..augment.runner import AugmentFailed, augment_folder
    from ..configs import apply_settings
    from ..recipes import recipe as recipe_config

    base = recipe_config(recipe).augment if recipe else AugmentConfig()
    cfg = apply_settings(override(base, seed=seed, copies=copies, max_side=max_side, jpeg_quality=quality), set_ or [],
                         "augment")
    try:
        report = augment_folder(images_dir, out, cfg, workers=workers, shard=shard, strict=strict, progress=not quiet)
    except AugmentFailed as e:
        _print_report(e.report)
        raise
    _print_report(report)


def _print_report(report) -> None:
    from rich.table import Table

    from ..ui import console, out

    table = Table(title="augment", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("source images", str(report.images))
    table.add_row("copies per image", str(report.copies))
    table.add_row("queries written", str(report.done))
    table.add_row("already there (skipped)", str(report.skipped_existing))
    table.add_row("failed images", str(len(report.failed)))
    table.add_row("ignored non-image files", str(len(report.ignored)))
    table.add_row("seconds", f"{report.seconds:.1f}")
    table.add_row("queries / s", f"{report.images_per_s:.1f}")
    table.add_row("manifest", report.manifest)
    out.print(table)
    for path, reason in report.failed[:MAX_FAILED_SHOWN]:
        console.print(f"[yellow]failed:[/] {reason}", highlight=False, soft_wrap=True)
    if len(report.failed) > MAX_FAILED_SHOWN:
        console.print(f"... and {len(report.failed) - MAX_FAILED_SHOWN} more (see augment*_report.json)")
    from ..formats.ids import OTHER_IMAGE_SUFFIXES

    ignored = [n for n in report.ignored if Path(n).suffix.lower() not in OTHER_IMAGE_SUFFIXES]  # those: warned
    if ignored:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        console.print(f"[yellow]ignored (no image suffix):[/] {shown}", highlight=False, soft_wrap=True)


@app.command("augment-merge")
def augment_merge(
    out: Path = typer.Argument(..., help="Output folder holding manifest.shard-I-of-N.csv files."),
) -> None:
    """Join the shard manifests of `augment --shard` into manifest.csv (sorted by query id)."""
    from ..augment.runner import merge_manifests
    from ..formats.manifest import read_manifest
    from ..ui import out as stdout

    path = merge_manifests(out)
    stdout.print(f"merged {len(read_manifest(path))} rows into {path}", highlight=False)


@app.command("augment-recipe")
def augment_recipe() -> None:
    """Print the augmentation recipe (families, weights, parameter ranges) as markdown."""
    from ..augment.recipe import render_recipe_markdown

    print(render_recipe_markdown(), end="")
