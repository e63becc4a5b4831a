"""QK Iteration stages: `init-model`, `precompute`, `train-q`, `train-k`, `describe`.

Thin commands: parse options, call one library function (`qk.train`, `qk.precompute`,
`qk.describe`, `models.init`), print a table. Defaults come from `isc_qk.configs`.
TensorFlow is imported inside the library calls only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..configs import LossConfig, TrainConfig, default
from ..errors import UserError
from .app import app
from .common import RECIPE_HELP, SET_HELP, default_weights, kv_table, override, warn_skipped, weights_option


@app.command("init-model")
def init_model_cmd(
    pca: Path = typer.Option(..., "--pca", help="The start's fitted PCA (pca.npz, or the folder of `gist-pca --train` / "
                                               "`descriptor-pca --train`)."),
    out: Path = typer.Option(..., "--out", help="Model folder to create."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP + " (default: the paper's settings)"),
    backbone: Optional[str] = typer.Option(None, "--backbone",
                                           help="efficientnet-lite0/1/2, efficientnet-b3, tiny, keras:PATH (trainable); "
                                                "sscd, sscd-distilled, onnx:PATH (frozen). (default: efficientnet-lite0)"),
    residual: Optional[str] = typer.Option(None, "--residual",
                                           help="Start descriptor: gist, sscd, ... (default: the one --pca was fitted on)."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights",
                                                   help="'imagenet', 'none' (random init) or a weights file."),
    head_hidden: Optional[int] = typer.Option(None, "--head-hidden", min=0,
                                              help="Hidden width of the FFN head; 0: a linear head. (default: 1024)"),
    residual_scale: Optional[float] = typer.Option(None, "--residual-scale", help="descriptor = scale * FFN + start vector."),
    head_shortcut: Optional[bool] = typer.Option(None, "--head-shortcut/--paper-head",
                                                 help="Zero-initialised FFN output + linear shortcut: starts exactly at the start."),
    output_l2: Optional[bool] = typer.Option(None, "--output-l2/--no-output-l2", help="L2-normalise the descriptor."),
    freeze_backbone: Optional[bool] = typer.Option(None, "--freeze-backbone/--train-backbone",
                                                   help="Never train the backbone: features precomputed, heads train."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the heads' initialisation."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP.replace("train.loss.tau=2", "model.head_hidden=0")),
) -> None:
    """Create the starting QK model: pretrained (or frozen) backbones + heads on the residual start
    (untrained, the model reproduces the start's baseline: GIST-PCA256, SSCD-PCA256...)."""
    from ..configs import ModelConfig, apply_settings
    from ..models.init import init_model
    from ..recipes import recipe as recipe_config
    from ..starts.stage import resolve_pca_file
    from ..starts.start import fitted_on
    from ..formats.pca import PCAModel

    pca_path = resolve_pca_file(pca)
    fitted = PCAModel.load(pca_path)
    base = recipe_config(recipe).model if recipe else ModelConfig(residual=fitted_on(fitted))
    cfg = override(base, backbone=backbone, residual=residual, head_hidden=head_hidden, residual_scale=residual_scale,
                   head_shortcut=head_shortcut, output_l2=output_l2, freeze_backbone=freeze_backbone, seed=seed,
                   backbone_weights=weights_option(backbone_weights) if backbone_weights is not None else None)
    if backbone is not None and backbone_weights is None:  # a new backbone starts from its own weights
        cfg = override(cfg, backbone_weights=default_weights(backbone))
    cfg = apply_settings(override(cfg, dim=fitted.dim), set_ or [], "model")
    path = init_model(pca_path, cfg, out)
    kv_table("init-model", {"model": path, "backbone": cfg.backbone, "residual start": cfg.residual, "dim": cfg.dim,
                            "head hidden": cfg.head_hidden, "frozen backbone": cfg.freeze_backbone})


@app.command("precompute")
def precompute_cmd(
    out: Path = typer.Option(..., "--out", help="Table prefix: writes PREFIX.npy (float16) + PREFIX.ids.txt."),
    model: Optional[Path] = typer.Option(None, "--model", help="QK model folder."),
    side: Optional[str] = typer.Option(None, "--side", help="k: K backbone (training images); q: Q backbone (augmented images)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder."),
    batch: int = typer.Option(32, "--batch", min=1, help="Images per chunk (also the resume granularity)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Only slice I of N (e.g. 0/4): PREFIX.shard-I-of-N.*"),
    merge: bool = typer.Option(False, "--merge", help="Join finished shards PREFIX.shard-*-of-N into PREFIX."),
    workers: int = typer.Option(2, "--workers", min=1, help="Image-decoding threads."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Frozen-side feature table: concat(backbone(image), start vector) per image, float16,
    chunked and resumable (re-run the same command to continue)."""
    from ..qk.precompute import merge_precomputed, precompute

    if merge:
        rep = merge_precomputed(out)
    else:
        if model is None or side is None or images is None:
            raise UserError("precompute needs --model, --side and --images (or --merge --out PREFIX)")
        rep = precompute(model, side, images, out, batch=batch, shard=shard, workers=workers, progress=progress)
    warn_skipped(rep.bad)
    kv_table("precompute", {"table": f"{rep.prefix}.npy", "rows": rep.rows, "width": rep.width,
                            "computed now": rep.computed, "unreadable": len(rep.bad), "seconds": rep.seconds})


def _register_train_command(side: str, doc: str, keys_help: str, queries_help: str, model_help: str) -> None:
    """train-q and train-k: one command body, the side fixed. Options left out take the recipe's
    value (``--recipe``), else the paper's (`configs.TrainConfig`, shown as [default: ...])."""
    d = lambda name: f" (default: {default(TrainConfig, name)})"  # noqa: E731
    loss = lambda name: f" (default: {default(LossConfig, name)})"  # noqa: E731

    def command(
        model: Path = typer.Option(..., "--model", help=model_help),
        keys: Path = typer.Option(..., "--keys", help=keys_help),
        queries: Path = typer.Option(..., "--queries", help=queries_help),
        out: Path = typer.Option(..., "--out", help="New model folder (checkpoints, losses, report)."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", help="Augmentation manifest (default: QUERIES/manifest.csv)."),
        recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP),
        negatives: Optional[str] = typer.Option(None, "--negatives", help="table: QK Iteration; batch: SimCLR-style in-batch negatives." + d("negatives")),
        tau: Optional[float] = typer.Option(None, "--tau", help="Temperature of P = exp(-d2/tau)." + loss("tau")),
        m: Optional[int] = typer.Option(None, "--m", help="Hard negatives per positive (B*M negatives per step)." + loss("m")),
        w_pos: Optional[float] = typer.Option(None, "--w-pos", help=loss("w_pos")),
        w_neg: Optional[float] = typer.Option(None, "--w-neg", help=loss("w_neg")),
        batch: Optional[int] = typer.Option(None, "--batch", help="Batch size B." + d("batch_size")),
        lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (cosine decay)." + d("lr")),
        lr_alpha: Optional[float] = typer.Option(None, "--lr-alpha", help="Final lr = lr * alpha." + d("lr_alpha")),
        warmup: Optional[float] = typer.Option(None, "--warmup", help="Fraction of the steps with the lr rising from 0." + d("warmup")),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the training pairs." + d("epochs")),
        steps: Optional[int] = typer.Option(None, "--steps", help="Exact number of steps (overrides --epochs)."),
        train_other_head: Optional[bool] = typer.Option(
            None, "--train-other-head/--own-head-only",
            help="Also move the other side's head through the selected rows (the paper), or train this side only."
            + d("train_other_head")),
        checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints." + d("checkpoint_every")),
        seed: Optional[int] = typer.Option(None, "--seed", help="Data-order seed." + d("seed")),
        chunk: Optional[int] = typer.Option(None, "--chunk", help="Table rows per head pass when mining negatives." + d("chunk")),
        table_device: Optional[str] = typer.Option(
            None, "--table-device",
            help="With --own-head-only: where the other side's cached descriptors live while mining: auto (resident "
                 "on the model's device when they fit), device, or host (streamed each step)." + d("table_device")),
        first_pass: Optional[str] = typer.Option(
            None, "--first-pass",
            help="With --own-head-only: auto (an exact int8 first pass on a CPU with int8 dot products, tables of "
                 ">= 262,144 rows), int8, or none (the float32 pass alone). Same pairs either way." + d("first_pass")),
        workers: Optional[int] = typer.Option(None, "--workers", help="Image-decoding threads." + d("workers")),
        feature_cache: Optional[Path] = typer.Option(
            None, "--feature-cache", help="Folder of a frozen backbone's feature tables, shared by every phase "
            "(the pipeline's WORK/feats; default: OUT/cache)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        distribute: str = typer.Option(
            "default", "--distribute",
            help="default: one device; mirrored: split each batch across local GPUs (or logical CPUs); "
            "multiworker: across machines (reads TF_CONFIG). Same loss as one device."),
        tensorboard: Optional[Path] = typer.Option(
            None, "--tensorboard", help="Also write TensorBoard event files here: loss parts, positive and "
            "mined-negative distances, lr per step (`tensorboard --logdir DIR`)."),
    ) -> None:
        from ..configs import apply_settings
        from ..recipes import recipe as recipe_config

        base = recipe_config(recipe).train if recipe else TrainConfig()
        cfg = override(base, side=side, negatives=negatives, batch_size=batch, lr=lr, lr_alpha=lr_alpha, warmup=warmup,
                       epochs=epochs, steps=steps, checkpoint_every=checkpoint_every, seed=seed, chunk=chunk,
                       workers=workers, train_other_head=train_other_head, table_device=table_device,
                       first_pass=first_pass, loss=override(base.loss, tau=tau, m=m, w_pos=w_pos, w_neg=w_neg))
        cfg = apply_settings(cfg, set_ or [], "train")
        _train(cfg, model, keys, queries, out, manifest, progress, distribute, feature_cache, tensorboard)

    command.__doc__ = doc
    app.command(f"train-{side}")(command)


def _train(cfg: TrainConfig, model, keys, queries, out, manifest, progress: bool, distribute: str,
           feature_cache: Optional[Path] = None, tensorboard: Path | None = None) -> None:
    from ..qk.distribute import make_strategy
    from ..qk.train import train
    from ..ui import console

    cfg.validate()
    rep = train(model, keys, queries, out, cfg, manifest=manifest, progress=progress, strategy=make_strategy(distribute),
                feature_cache=feature_cache, tensorboard=tensorboard)
    if rep.skipped:
        console.print(f"{out}: this run is already finished; nothing to do")
    kv_table(f"train-{cfg.side}", {
        "model": rep.out_dir, "negatives": rep.negatives, "steps": rep.steps, "batch": rep.batch_size,
        "pairs (rows)": rep.items, "table rows": rep.table_rows, "resumed from step": rep.resumed_from,
        "loss, first 5 steps": rep.first_loss, "loss, last 5 steps": rep.last_loss,
        "s / step": rep.seconds_per_step, "seconds": rep.seconds, "replicas": rep.replicas, "mining": rep.mining,
    })


_register_train_command(
    "q",
    """Train Q backbone, Q head and K head; each step pushes B queries against ALL keys of the
    table (K head over the precomputed K features). Re-run the same command to resume.""",
    keys_help="K feature table prefix (precompute --side k); an image folder with --negatives batch.",
    queries_help="Augmented images folder with manifest.csv (a frozen backbone: or its Q feature table).",
    model_help="Starting QK model folder.",
)
_register_train_command(
    "k",
    """Train K backbone, K head and Q head; each step pushes B keys against ALL queries of the
    table (Q head over the precomputed Q features). Re-run the same command to resume.""",
    keys_help="Training images folder (the keys; a frozen backbone: or its K feature table).",
    queries_help="Q feature table prefix (precompute --side q on the augmented images); the augmented folder with --negatives batch.",
    model_help="Starting QK model folder (usually train-q's output).",
)


@app.command("describe")
def describe_cmd(
    out: Path = typer.Option(..., "--out", help="SET.h5: official per-set layout (vectors + image_names)."),
    model: Optional[Path] = typer.Option(None, "--model", help="QK model folder."),
    side: Optional[str] = typer.Option(None, "--side", help="q for queries, k for references / training images."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder."),
    batch: int = typer.Option(32, "--batch", min=1),
    shard: Optional[str] = typer.Option(None, "--shard", help="Only slice I of N (e.g. 0/4): SET.shard-I-of-N.h5"),
    merge: bool = typer.Option(False, "--merge", help="Join finished shards SET.shard-*-of-N.h5 into SET.h5."),
    workers: int = typer.Option(2, "--workers", min=1),
    feature_cache: Optional[Path] = typer.Option(
        None, "--feature-cache", help="With a frozen backbone: the folder of its feature tables (the pipeline's "
        "WORK/feats); the set's table is made there once and only the head runs."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """256-d float32 descriptors of every image (queries with the Q model, references with K);
    unreadable images are skipped and listed. Resumable."""
    from ..qk.describe import describe, merge_descriptors

    if merge:
        rep = merge_descriptors(out)
    else:
        if model is None or side is None or images is None:
            raise UserError("describe needs --model, --side and --images (or --merge --out SET.h5)")
        rep = describe(model, side, images, out, batch=batch, shard=shard, workers=workers, progress=progress,
                       feature_cache=feature_cache)
    warn_skipped(rep.bad)
    kv_table("describe", {"descriptors": rep.out, "images": rep.descriptors, "dim": rep.dim,
                          "computed now": rep.computed, "unreadable": len(rep.bad), "seconds": rep.seconds})
