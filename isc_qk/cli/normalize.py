"""Commands of the 'normalize' area: fit training-set score normalisation, apply it per vector.

`normalize-fit` turns training descriptors into a fixed artifact folder; `normalize` applies
it to any per-set descriptor file (GIST-PCA, backbone features, QK model), one vector at a
time, so a descriptor never depends on other query or reference images.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..configs import NormConfig, default
from .app import app


@app.command("normalize-fit")
def normalize_fit(
    train: list[Path] = typer.Option(..., "--train", help="Training-set descriptor HDF5 file(s) (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Folder for the fitted normaliser (norm.npz + config.json)."),
    method: str = typer.Option(default(NormConfig, "method"), "--method", help="nes (negative-embedding subtraction), whiten, or none."),
    k: int = typer.Option(default(NormConfig, "k"), "--k", help="nes: training neighbours averaged per vector."),
    beta: float = typer.Option(default(NormConfig, "beta"), "--beta", help="nes: weight of the subtracted neighbour mean."),
    dba_k: int = typer.Option(
        default(NormConfig, "dba_k"), "--dba-k", help="nes: DBA neighbours for the training set (0 = off; 1st place used 10)."
    ),
    dim: int = typer.Option(default(NormConfig, "dim"), "--dim", help="Largest output dimension (<= 256)."),
) -> None:
    """Fit score normalisation on TRAINING descriptors and save it as an artifact folder."""
    from ..normalize.files import fit_normalizer_files
    from ..ui import out as stdout

    cfg = NormConfig(method=method, k=k, beta=beta, dba_k=dba_k, dim=dim)
    res = fit_normalizer_files(train, cfg, out)
    verb = "already fitted" if res.skipped else "fitted"
    stdout.print(
        f"{verb} [bold]{res.method}[/] on {res.n_train} training descriptors "
        f"({res.input_dim}-d -> {res.output_dim}-d): {res.out_dir}",
        highlight=False,
    )


@app.command("normalize")
def normalize(
    norm: Path = typer.Option(..., "--norm", help="Folder made by `isc-qk normalize-fit`."),
    inp: Path = typer.Option(..., "--in", help="Per-set descriptor HDF5 to normalise (queries or references)."),
    out: Path = typer.Option(..., "--out", help="Output descriptor HDF5 (same layout)."),
) -> None:
    """Apply a fitted normaliser to every vector of a descriptor file, each on its own."""
    from ..normalize.files import normalize_file
    from ..ui import out as stdout

    res = normalize_file(norm, inp, out)
    verb = "up to date" if res.skipped else "wrote"
    stdout.print(
        f"{verb}: {res.out_path} ({res.n} vectors, {res.method}, {res.input_dim}-d -> {res.output_dim}-d)",
        highlight=False,
    )
