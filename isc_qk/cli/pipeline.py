"""`isc-qk pipeline` (the whole QK schedule) and `isc-qk demo` (offline, built-in data)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


def _show(results, work: Path) -> None:
    from ..progress import out
    from ..report import rich_table

    out.print(rich_table(results.rows, title="QK Iteration vs baselines (micro-AP)"))
    out.print(f"results: {work / 'results.md'}, {work / 'results.json'}, {work / 'results.png'}")


@app.command("pipeline")
def pipeline_cmd(
    data: Path = typer.Option(..., "--data", help="DISC-layout folder: train/, references/, queries/, ground_truth.csv."),
    work: Path = typer.Option(..., "--work", help="Work folder (artifacts, results); re-run to resume."),
    phases: str = typer.Option("Q1,K1,Q2,K2,Q3", "--phases", help="Alternating phases from Q1."),
    backbone: str = typer.Option("efficientnet-lite0", "--backbone"),
    backbone_weights: Optional[str] = typer.Option("imagenet", "--backbone-weights",
                                                   help="'imagenet', a weights file, or 'none'."),
    epochs_per_phase: float = typer.Option(2.0, "--epochs-per-phase",
                                           help="Training queries per phase / training images."),
    batch: int = typer.Option(32, "--batch"),
    lr: float = typer.Option(1e-4, "--lr"),
    tau: float = typer.Option(0.5, "--tau", help="Loss temperature (the paper: 0.07; see README)."),
    residual_scale: float = typer.Option(1.0, "--residual-scale", help="descriptor = s * head + gist256"),
    head_shortcut: bool = typer.Option(True, "--head-shortcut/--paper-head",
                                       help="Zero-initialised FFN output + linear shortcut (default), or the paper's head."),
    copies: int = typer.Option(5, "--copies", help="Augmented copies per training image."),
    seed: int = typer.Option(0, "--seed"),
    baselines: str = typer.Option("gist,imagenet,inbatch", "--baselines", help="Comma list, or '' for none."),
    normalize: str = typer.Option("nes", "--normalize", help="Extra rows with score normalisation: nes, whiten, ''."),
    workers: int = typer.Option(2, "--workers", min=1),
) -> None:
    """Run augment -> gist-pca -> precompute -> train-q -> precompute -> train-k ... and evaluate
    every phase next to the baselines; writes WORK/results.{json,md,png}."""
    from ..pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(
        phases=[p.strip() for p in phases.split(",") if p.strip()], backbone=backbone,
        backbone_weights=None if backbone_weights in (None, "none") else backbone_weights,
        epochs_per_phase=epochs_per_phase, batch_size=batch, lr=lr, tau=tau, residual_scale=residual_scale,
        head_shortcut=head_shortcut, copies=copies,
        seed=seed, baselines=[b for b in baselines.split(",") if b], normalizations=[n for n in normalize.split(",") if n],
        workers=workers,
    )
    _show(run_pipeline(data, work, cfg), work)


@app.command("demo")
def demo_cmd(
    work: Path = typer.Option(Path("isc-qk-demo"), "--work", help="Work folder (re-run to resume)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Run on this DISC-layout folder instead of the built-in one."),
    quick: bool = typer.Option(False, "--quick", help="Tiny backbone and data: a smoke test in under a minute."),
) -> None:
    """Offline demo: builds a small DISC-style dataset from photos shipped with scikit-image and
    scikit-learn, runs a shortened QK schedule with the baselines, prints the table."""
    from ..demo import run_demo

    results = run_demo(work, data=data, quick=quick)
    _show(results, work / "pipeline")
