"""`isc-qk pipeline` (the whole QK schedule) and `isc-qk demo` (offline, built-in data)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from .app import app
from .common import SET_HELP, default_weights, override, split_list, weights_option

_RECIPE = "Every option left out takes the recipe's value (`isc-qk recipe NAME` prints them)."


def _show(results, work: Path) -> None:
    from ..pipeline.report import rich_table
    from ..ui import out

    out.print(rich_table(results.rows, title="QK Iteration vs baselines (micro-AP)"))
    out.print(f"results: {work / 'results.md'}, {work / 'results.json'}, {work / 'results.png'}")


@app.command("pipeline")
def pipeline_cmd(
    data: Path = typer.Option(..., "--data", help="DISC-layout folder: train/, references/, queries/, ground_truth.csv."),
    work: Path = typer.Option(..., "--work", help="Work folder (artifacts, results); re-run to resume."),
    recipe: str = typer.Option("auto", "--recipe", help="sscd (frozen SSCD, heads on the SSCD residual), gist "
                               "(EfficientNet-Lite0 on the GIST residual), paper, demo, demo-sscd, quick, or auto: sscd "
                               "where it is installed. " + _RECIPE),
    phases: Optional[str] = typer.Option(None, "--phases", help="Alternating phases from Q1, e.g. Q1,K1,Q2,K2,Q3."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="efficientnet-lite0/1/2, keras:PATH, sscd, onnx:PATH..."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="'imagenet', a weights file, or 'none'."),
    residual: Optional[str] = typer.Option(None, "--residual", help="Start descriptor: gist, sscd, sscd-distilled, onnx:PATH."),
    epochs_per_phase: Optional[float] = typer.Option(None, "--epochs-per-phase",
                                                     help="Training queries per phase / training images."),
    batch: Optional[int] = typer.Option(None, "--batch"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="Fraction of each phase with the lr rising from 0."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Loss temperature (the paper: 0.07; see README)."),
    m: Optional[int] = typer.Option(None, "--m", help="Hard negatives per positive."),
    residual_scale: Optional[float] = typer.Option(None, "--residual-scale", help="descriptor = s * head + start"),
    head_shortcut: Optional[bool] = typer.Option(None, "--head-shortcut/--paper-head",
                                                 help="Zero-initialised FFN output + linear shortcut, or the paper's head."),
    copies: Optional[int] = typer.Option(None, "--copies", help="Augmented copies per training image."),
    whiten_start: Optional[bool] = typer.Option(None, "--whiten-start/--plain-start",
                                                help="Whitened PCA (then L2) for the frozen descriptors' baselines and the residual start."),
    seed: int = typer.Option(0, "--seed"),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Comma list of gist, imagenet, sscd, inbatch, or '' for none."),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="Extra rows with score normalisation: nes, whiten, ''."),
    workers: int = typer.Option(2, "--workers", min=1),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Run augment -> gist-pca -> precompute -> train-q -> precompute -> train-k ... and evaluate
    every phase next to the baselines; writes WORK/results.{json,md,png}."""
    from ..configs import apply_settings
    from ..pipeline.schedule import run_pipeline
    from ..recipes import recipe as recipe_config

    base = recipe_config(recipe)
    weights = weights_option(backbone_weights) if backbone_weights is not None else None
    cfg = override(
        base, phases=split_list(phases) if phases is not None else None, epochs_per_phase=epochs_per_phase,
        workers=workers, baselines=split_list(baselines) if baselines is not None else None,
        normalizations=split_list(normalize) if normalize is not None else None,
        model=override(base.model, backbone=backbone, residual=residual, residual_scale=residual_scale,
                        head_shortcut=head_shortcut),
        train=override(base.train, batch_size=batch, lr=lr, warmup=warmup, loss=override(base.train.loss, tau=tau, m=m)),
        augment=override(base.augment, copies=copies), pca=override(base.pca, whiten=whiten_start)).with_seed(seed)
    if backbone is not None and backbone_weights is None:  # a new backbone starts from its own weights
        weights = default_weights(backbone)
    if backbone is not None or backbone_weights is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_weights=weights))
    _show(run_pipeline(data, work, apply_settings(cfg, set_ or [])), work)


@app.command("demo")
def demo_cmd(
    work: Path = typer.Option(Path("isc-qk-demo"), "--work", help="Work folder (re-run to resume)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Run on this DISC-layout folder instead of the built-in one."),
    quick: bool = typer.Option(False, "--quick", help="Tiny backbone and data: a smoke test in under a minute."),
) -> None:
    """Offline demo: builds a small DISC-style dataset from photos shipped with scikit-image and
    scikit-learn, runs a shortened QK schedule with the baselines, prints the table."""
    from ..pipeline.demo import run_demo

    from ..ui import out

    results = run_demo(work, data=data, quick=quick)
    _show(results, work)
    out.print(f"next: isc-qk pipeline --data YOUR_DISC_FOLDER --work runs/mine   "
              f"(train/, references/, queries/, ground_truth.csv; re-run to resume)")


@app.command("recipe")
def recipe_cmd(
    name: Optional[str] = typer.Argument(None, help="A recipe (paper, gist, sscd, demo, demo-sscd, quick); none: list them."),
    data: str = typer.Option("DATA", "--data", help="The DISC-layout folder to write into the commands."),
    work: str = typer.Option("W", "--work", help="The work folder to write into the commands."),
) -> None:
    """Print a recipe: what it changes from the paper's settings, and the stage-by-stage commands
    that give the descriptors `isc-qk pipeline --recipe NAME` gives."""
    from rich.table import Table

    from ..errors import UserError
    from ..pipeline.commands import changes_table, stage_commands
    from ..recipes import RECIPES
    from ..ui import out

    if name is None:
        t = Table(title="recipes (isc-qk recipe NAME for one)")
        for col in ("recipe", "changes", "what"):
            t.add_column(col)
        for r in RECIPES.values():
            t.add_row(r.name, r.base or "-", r.summary)
        out.print(t)
        return
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    paper = RECIPES["paper"].config()
    t = Table(title=f"recipe {name}: settings that differ from the paper's")
    for col in ("setting", "paper", name):
        t.add_column(col)
    for key, a, b in changes_table(RECIPES[name].config(), paper):
        t.add_row(key, repr(a), repr(b))
    out.print(t)
    out.print("\n".join(stage_commands(name, data, work)), highlight=False, soft_wrap=True)
