"""`isc-qk gist-pca`: fit the GIST PCA on training images, or describe a set with it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..configs import GistPCAConfig, default
from ..errors import UserError
from .app import app


@app.command("gist-pca")
def gist_pca(
    out: Path = typer.Option(..., "--out", help="With --train: a folder for pca.npz. With --images: SET.h5."),
    train: Optional[Path] = typer.Option(None, "--train", help="Training images: fit the PCA on them."),
    n_train: int = typer.Option(default(GistPCAConfig, "n_train"), "--n-train", help="Seeded sample of training images (0 = all)."),
    seed: int = typer.Option(default(GistPCAConfig, "seed"), "--seed"),
    pca: Optional[Path] = typer.Option(None, "--pca", help="A fitted pca.npz (or its folder)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images to describe with --pca."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Describe only slice I of N, e.g. 0/4."),
    workers: int = typer.Option(2, "--workers", min=1),
    merge: bool = typer.Option(False, "--merge", help="Join finished shards of --out (SET.h5 and SET.gist960.h5)."),
) -> None:
    """GIST-PCA256, the ISC2021 baseline: `--train DIR --out DIR` fits the PCA (no whitening) on
    training images; `--pca PCA --images DIR --out SET.h5` writes SET.h5 (256-d) and
    SET.gist960.h5 in the official per-set layout."""
    from ..gist.stage import describe_gist_set, fit_gist_pca, merge_gist_shards
    from ..ui import console

    if merge:
        console.print("merged: " + ", ".join(str(p) for p in merge_gist_shards(out)))
        return
    if (train is None) == (images is None):
        raise UserError("give either --train DIR (fit the PCA) or --pca PCA --images DIR (describe)")
    if train is not None:
        if n_train < 0:
            raise UserError(f"--n-train must be >= 0 (0 = every training image), got {n_train}")
        cfg = GistPCAConfig(n_train=n_train or None, seed=seed)
        console.print(f"GIST PCA: {fit_gist_pca(train, out, cfg, workers=workers)}")
        return
    if pca is None:
        raise UserError("--images needs --pca (fit one with --train first)")
    rep = describe_gist_set(pca, images, out, workers=workers, shard=shard)
    if rep.skipped:
        console.print(f"{rep.out_256} already complete; nothing to do")
    else:
        console.print(f"{rep.n_described} images: {rep.out_256} (256-d), {rep.out_960} (960-d)")
