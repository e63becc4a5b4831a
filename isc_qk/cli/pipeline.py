"""`isc-qk pipeline` (the whole QK schedule) and `isc-qk demo` (offline, built-in data)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..configs import PipelineConfig
from .app import app
from .common import split_list, weights_option

_P = PipelineConfig()  # the recipe's defaults, read once for the options below


def _show(results, work: Path) -> None:
    from ..pipeline.report import rich_table
    from ..ui import out

    out.print(rich_table(results.rows, title="QK Iteration vs baselines (micro-AP)"))
    out.print(f"results: {work / 'results.md'}, {work / 'results.json'}, {work / 'results.png'}")


@app.command("pipeline")
def pipeline_cmd(
    data: Path = typer.Option(..., "--data", help="DISC-layout folder: train/, references/, queries/, ground_truth.csv."),
    work: Path = typer.Option(..., "--work", help="Work folder (artifacts, results); re-run to resume."),
    phases: str = typer.Option(",".join(_P.phases), "--phases", help="Alternating phases from Q1."),
    backbone: str = typer.Option(_P.model.backbone, "--backbone"),
    backbone_weights: Optional[str] = typer.Option(_P.model.backbone_weights, "--backbone-weights",
                                                   help="'imagenet', a weights file, or 'none'."),
    epochs_per_phase: float = typer.Option(_P.epochs_per_phase, "--epochs-per-phase",
                                           help="Training queries per phase / training images."),
    batch: int = typer.Option(_P.train.batch_size, "--batch"),
    lr: float = typer.Option(_P.train.lr, "--lr"),
    tau: float = typer.Option(_P.train.loss.tau, "--tau", help="Loss temperature (the paper: 0.07; see README)."),
    residual_scale: float = typer.Option(_P.model.residual_scale, "--residual-scale", help="descriptor = s * head + start"),
    head_shortcut: bool = typer.Option(_P.model.head_shortcut, "--head-shortcut/--paper-head",
                                       help="Zero-initialised FFN output + linear shortcut (default), or the paper's head."),
    copies: int = typer.Option(_P.augment.copies, "--copies", help="Augmented copies per training image."),
    seed: int = typer.Option(_P.train.seed, "--seed"),
    baselines: str = typer.Option(",".join(_P.baselines), "--baselines", help="Comma list, or '' for none."),
    normalize: str = typer.Option(",".join(_P.normalizations), "--normalize",
                                  help="Extra rows with score normalisation: nes, whiten, ''."),
    workers: int = typer.Option(_P.workers, "--workers", min=1),
) -> None:
    """Run augment -> gist-pca -> precompute -> train-q -> precompute -> train-k ... and evaluate
    every phase next to the baselines; writes WORK/results.{json,md,png}."""
    from ..pipeline.schedule import run_pipeline

    r = dataclasses.replace
    cfg = r(_P, phases=split_list(phases), epochs_per_phase=epochs_per_phase, workers=workers,
            baselines=split_list(baselines), normalizations=split_list(normalize),
            model=r(_P.model, backbone=backbone, backbone_weights=weights_option(backbone_weights),
                    residual_scale=residual_scale, head_shortcut=head_shortcut),
            train=r(_P.train, batch_size=batch, lr=lr, loss=r(_P.train.loss, tau=tau)),
            augment=r(_P.augment, copies=copies)).with_seed(seed)
    _show(run_pipeline(data, work, cfg), work)


@app.command("demo")
def demo_cmd(
    work: Path = typer.Option(Path("isc-qk-demo"), "--work", help="Work folder (re-run to resume)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Run on this DISC-layout folder instead of the built-in one."),
    quick: bool = typer.Option(False, "--quick", help="Tiny backbone and data: a smoke test in under a minute."),
) -> None:
    """Offline demo: builds a small DISC-style dataset from photos shipped with scikit-image and
    scikit-learn, runs a shortened QK schedule with the baselines, prints the table."""
    from ..pipeline.demo import run_demo

    results = run_demo(work, data=data, quick=quick)
    _show(results, work / "pipeline")
