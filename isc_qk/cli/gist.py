"""`isc-qk gist-pca` and `isc-qk descriptor-pca`: fit a frozen descriptor's PCA on training
images, or describe a set with it (GIST-PCA256, SSCD-PCA256, any ONNX embedding)."""

from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import Optional

import typer

from ..configs import PCAFitConfig, default
from ..errors import UserError
from .app import app
from .common import RECIPE_HELP, SET_HELP, override


def _run(descriptor: str, out: Path, train: Optional[Path], n_train: Optional[int], seed: Optional[int],
         pca: Optional[Path], images: Optional[Path], shard: Optional[str], workers: int, merge: bool,
         whiten: Optional[bool], recipe: Optional[str], settings: Optional[list[str]]) -> None:
    from ..configs import apply_settings
    from ..recipes import recipe as recipe_config
    from ..starts.stage import describe_start_set, fit_start_pca, merge_start_shards
    from ..ui import console

    if merge:
        console.print("merged: " + ", ".join(str(p) for p in merge_start_shards(out)))
        return
    if (train is None) == (images is None):
        raise UserError("give either --train DIR (fit the PCA) or --pca PCA --images DIR (describe)")
    if train is not None:
        if n_train is not None and n_train < 0:
            raise UserError(f"--n-train must be >= 0 (0 = every training image), got {n_train}")
        base = recipe_config(recipe).pca if recipe else PCAFitConfig()
        cfg = override(base, seed=seed, whiten=whiten)
        if n_train is not None:
            cfg = dataclasses.replace(cfg, n_train=n_train or None)
        cfg = apply_settings(cfg, settings or [], "pca")
        console.print(f"{descriptor} PCA: {fit_start_pca(descriptor, train, out, cfg, workers=workers)}")
        return
    if pca is None:
        raise UserError("--images needs --pca (fit one with --train first)")
    rep = describe_start_set(pca, images, out, workers=workers, shard=shard)
    if rep.skipped:
        console.print(f"{rep.out_256} already complete; nothing to do")
    else:
        console.print(f"{rep.n_described} images: {rep.out_256} (PCA), {rep.out_raw} (raw)")


_OUT_HELP = "With --train: a folder for pca.npz. With --images: SET.h5."
_N_TRAIN = f"Seeded sample of training images (0 = all). (default: {default(PCAFitConfig, 'n_train')})"
_WHITEN_HELP = "With --train: divide each component by its training standard deviation, then L2."
_RECIPE = "With --train: " + RECIPE_HELP.replace("Start from", "take the PCA settings of")
_SET = SET_HELP.replace("train.loss.tau=2 --set model.output_l2=true", "pca.dim=64")


@app.command("gist-pca")
def gist_pca(
    out: Path = typer.Option(..., "--out", help=_OUT_HELP),
    train: Optional[Path] = typer.Option(None, "--train", help="Training images: fit the PCA on them."),
    n_train: Optional[int] = typer.Option(None, "--n-train", help=_N_TRAIN),
    seed: Optional[int] = typer.Option(None, "--seed"),
    pca: Optional[Path] = typer.Option(None, "--pca", help="A fitted pca.npz (or its folder)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images to describe with --pca."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Describe only slice I of N, e.g. 0/4."),
    workers: int = typer.Option(2, "--workers", min=1),
    merge: bool = typer.Option(False, "--merge", help="Join finished shards of --out (SET.h5 and SET.gist960.h5)."),
    whiten: Optional[bool] = typer.Option(None, "--whiten/--no-whiten", help=_WHITEN_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=_RECIPE),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET),
) -> None:
    """GIST-PCA256, the ISC2021 baseline: `--train DIR --out DIR` fits the PCA (no whitening
    unless --whiten) on training images; `--pca PCA --images DIR --out SET.h5` writes SET.h5 (256-d) and
    SET.gist960.h5 in the official per-set layout."""
    _run("gist", out, train, n_train, seed, pca, images, shard, workers, merge, whiten, recipe, set_)


@app.command("descriptor-pca")
def descriptor_pca(
    out: Path = typer.Option(..., "--out", help=_OUT_HELP),
    descriptor: Optional[str] = typer.Option(None, "--descriptor",
                                             help="gist, sscd, sscd@sq288, sscd-distilled or onnx:PATH (an image-embedding "
                                                  "ONNX model). (default: the recipe's residual start, else sscd)"),
    train: Optional[Path] = typer.Option(None, "--train", help="Training images: fit the PCA on them."),
    n_train: Optional[int] = typer.Option(None, "--n-train", help=_N_TRAIN),
    seed: Optional[int] = typer.Option(None, "--seed"),
    pca: Optional[Path] = typer.Option(None, "--pca", help="A fitted pca.npz (or its folder); it names its descriptor."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images to describe with --pca."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Describe only slice I of N, e.g. 0/4."),
    workers: int = typer.Option(2, "--workers", min=1),
    merge: bool = typer.Option(False, "--merge", help="Join finished shards of --out (SET.h5 and its raw file)."),
    whiten: Optional[bool] = typer.Option(None, "--whiten/--no-whiten", help=_WHITEN_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=_RECIPE),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=_SET),
) -> None:
    """A frozen descriptor's PCA-256 fitted on TRAINING images, then L2 (SSCD-PCA256...): the
    baseline descriptor, and the residual start of `init-model --residual`. Writes SET.h5 and
    the raw vectors (SET.sscd512.h5...)."""
    if descriptor is None:
        from ..recipes import recipe as recipe_config

        descriptor = recipe_config(recipe).model.residual if recipe else "sscd"
    _run(descriptor, out, train, n_train, seed, pca, images, shard, workers, merge, whiten, recipe, set_)
