"""QK Iteration stages: `init-model`, `precompute`, `train-q`, `train-k`, `describe`.

Thin commands: parse options, call one library function (`qk.train`, `qk.precompute`,
`qk.describe`, `models.init`), print a table. Defaults come from `isc_qk.configs`.
TensorFlow is imported inside the library calls only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..configs import LossConfig, ModelConfig, TrainConfig, default
from ..errors import UserError
from .app import app
from .common import kv_table, warn_skipped, weights_option


@app.command("init-model")
def init_model_cmd(
    pca: Path = typer.Option(..., "--pca", help="The start's fitted PCA (pca.npz, or the folder of `gist-pca --train` / "
                                               "`descriptor-pca --train`)."),
    out: Path = typer.Option(..., "--out", help="Model folder to create."),
    backbone: str = typer.Option(default(ModelConfig, "backbone"), "--backbone",
                                 help="efficientnet-lite0/1/2, efficientnet-b3, tiny, keras:PATH (trainable); "
                                      "sscd, sscd-distilled, onnx:PATH (frozen)."),
    residual: Optional[str] = typer.Option(None, "--residual",
                                           help="Start descriptor: gist, sscd, ... [default: the one --pca was fitted on]."),
    backbone_weights: Optional[str] = typer.Option(default(ModelConfig, "backbone_weights"), "--backbone-weights",
                                                   help="'imagenet', 'none' (random init) or a weights file."),
    head_hidden: int = typer.Option(default(ModelConfig, "head_hidden"), "--head-hidden", min=1,
                                    help="Hidden width of the FFN head."),
    residual_scale: float = typer.Option(default(ModelConfig, "residual_scale"), "--residual-scale",
                                         help="descriptor = scale * FFN + start vector."),
    head_shortcut: bool = typer.Option(default(ModelConfig, "head_shortcut"), "--head-shortcut/--no-head-shortcut",
                                       help="Zero-initialised FFN output + linear shortcut: starts exactly at GIST."),
    seed: int = typer.Option(default(ModelConfig, "seed"), "--seed", help="Seed of the heads' initialisation."),
) -> None:
    """Create the starting QK model: pretrained (or frozen) backbones + heads on the residual start
    (untrained, the model reproduces the start's baseline: GIST-PCA256, SSCD-PCA256...)."""
    from ..models.init import init_model
    from ..starts.stage import load_pca, resolve_pca_file

    pca_path = resolve_pca_file(pca)
    fitted, desc = load_pca(pca_path)
    dim = fitted.dim
    cfg = ModelConfig(backbone=backbone, backbone_weights=weights_option(backbone_weights), residual=residual or desc.name,
                      head_hidden=head_hidden, dim=dim, residual_scale=residual_scale, head_shortcut=head_shortcut,
                      seed=seed)
    path = init_model(pca_path, cfg, out)
    kv_table("init-model", {"model": path, "backbone": backbone, "residual start": cfg.residual, "dim": dim,
                            "head hidden": head_hidden})


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
    """train-q and train-k: one command body, the side fixed (defaults: `configs.TrainConfig`)."""
    d = lambda name: default(TrainConfig, name)  # noqa: E731
    loss = lambda name: default(LossConfig, name)  # noqa: E731

    def command(
        model: Path = typer.Option(..., "--model", help=model_help),
        keys: Path = typer.Option(..., "--keys", help=keys_help),
        queries: Path = typer.Option(..., "--queries", help=queries_help),
        out: Path = typer.Option(..., "--out", help="New model folder (checkpoints, losses, report)."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", help="Augmentation manifest (default: QUERIES/manifest.csv)."),
        negatives: str = typer.Option(d("negatives"), "--negatives", help="table: QK Iteration; batch: SimCLR-style in-batch negatives."),
        tau: float = typer.Option(loss("tau"), "--tau", help="Temperature of P = exp(-d2/tau)."),
        m: int = typer.Option(loss("m"), "--m", help="Hard negatives per positive (B*M negatives per step)."),
        w_pos: float = typer.Option(loss("w_pos"), "--w-pos"),
        w_neg: float = typer.Option(loss("w_neg"), "--w-neg"),
        batch: int = typer.Option(d("batch_size"), "--batch", help="Batch size B."),
        lr: float = typer.Option(d("lr"), "--lr", help="Adam learning rate (cosine decay)."),
        lr_alpha: float = typer.Option(d("lr_alpha"), "--lr-alpha", help="Final lr = lr * alpha."),
        warmup: float = typer.Option(d("warmup"), "--warmup", help="Fraction of the steps with the lr rising from 0."),
        epochs: float = typer.Option(d("epochs"), "--epochs", help="Passes over the training pairs."),
        steps: Optional[int] = typer.Option(d("steps"), "--steps", help="Exact number of steps (overrides --epochs)."),
        checkpoint_every: int = typer.Option(d("checkpoint_every"), "--checkpoint-every", help="Steps between checkpoints."),
        seed: int = typer.Option(d("seed"), "--seed", help="Data-order seed."),
        chunk: int = typer.Option(d("chunk"), "--chunk", help="Table rows per head pass when mining negatives."),
        train_other_head: bool = typer.Option(
            d("train_other_head"), "--train-other-head/--no-train-other-head",
            help="Also train the other side's head (the paper). Without it, the other side is constant: its "
                 "descriptors of every table row are computed once and mined on the device (the SSCD recipe)."),
        table_device: str = typer.Option(
            d("table_device"), "--table-device",
            help="Where cached descriptors live while mining: auto (resident on the model's device when they "
                 "fit), device, or host (streamed each step)."),
        first_pass: str = typer.Option(
            d("first_pass"), "--first-pass",
            help="Cached descriptors: auto (an exact int8 first pass on a CPU with int8 dot products, tables of "
                 ">= 262,144 rows), int8, or none (the float32 pass alone). Same pairs either way."),
        workers: int = typer.Option(d("workers"), "--workers", help="Image-decoding threads."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        distribute: str = typer.Option(
            "default", "--distribute",
            help="default: one device; mirrored: split each batch across local GPUs (or logical CPUs); "
            "multiworker: across machines (reads TF_CONFIG). Same loss as one device."),
    ) -> None:
        cfg = TrainConfig(side=side, negatives=negatives, loss=LossConfig(tau=tau, m=m, w_pos=w_pos, w_neg=w_neg),
                          batch_size=batch, lr=lr, lr_alpha=lr_alpha, warmup=warmup, epochs=epochs, steps=steps,
                          checkpoint_every=checkpoint_every, seed=seed, chunk=chunk, workers=workers,
                          train_other_head=train_other_head, table_device=table_device, first_pass=first_pass)
        _train(cfg, model, keys, queries, out, manifest, progress, distribute)

    command.__doc__ = doc
    app.command(f"train-{side}")(command)


def _train(cfg: TrainConfig, model, keys, queries, out, manifest, progress: bool, distribute: str) -> None:
    from ..qk.distribute import make_strategy
    from ..qk.train import train
    from ..ui import console

    cfg.validate()
    rep = train(model, keys, queries, out, cfg, manifest=manifest, progress=progress, strategy=make_strategy(distribute))
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
        rep = describe(model, side, images, out, batch=batch, shard=shard, workers=workers, progress=progress)
    warn_skipped(rep.bad)
    kv_table("describe", {"descriptors": rep.out, "images": rep.descriptors, "dim": rep.dim,
                          "computed now": rep.computed, "unreadable": len(rep.bad), "seconds": rep.seconds})
