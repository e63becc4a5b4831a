"""QK Iteration stages: `init-model`, `precompute`, `train-q`, `train-k`, `describe`.

Thin commands: parse options, call one library function (`isc_qk.train`, `.precompute`,
`.describe`), print a table. TensorFlow is imported inside the library calls only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .app import app


def _table(title: str, rows: dict) -> None:
    from rich.table import Table

    from ..progress import out

    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows.items():
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out.print(t)


def _warn_bad(bad: list[str]) -> None:
    from ..progress import console

    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad)} in all)" if len(bad) > 5 else "")
        console.print(f"[yellow]warning:[/] {len(bad)} unreadable image(s) skipped: {shown}", highlight=False, soft_wrap=True)


def _pca_file(path: Path) -> Path:
    return path / "pca.npz" if path.is_dir() else path


@app.command("init-model")
def init_model_cmd(
    pca: Path = typer.Option(..., "--pca", help="Fitted GIST PCA (pca.npz, or the folder of `isc-qk gist-pca --train`)."),
    out: Path = typer.Option(..., "--out", help="Model folder to create."),
    backbone: str = typer.Option("efficientnet-lite0", "--backbone", help="efficientnet-lite0/1/2, efficientnet-b3 or tiny."),
    backbone_weights: Optional[str] = typer.Option(
        "imagenet", "--backbone-weights", help="'imagenet', 'none' (random init) or a weights file."
    ),
    head_hidden: int = typer.Option(1024, "--head-hidden", min=1, help="Hidden width of the FFN head."),
    residual_scale: float = typer.Option(0.01, "--residual-scale", help="descriptor = scale * FFN + gist256."),
    head_shortcut: bool = typer.Option(False, "--head-shortcut/--no-head-shortcut",
                                       help="Zero-initialised FFN output + linear shortcut: starts exactly at GIST."),
    seed: int = typer.Option(0, "--seed", help="Seed of the heads' initialisation."),
) -> None:
    """Create the starting QK model: pretrained backbones + GIST-residual heads (untrained, the
    model reproduces GIST-PCA)."""
    from ..gist_pca import PCAModel
    from ..model import ModelConfig
    from ..train import init_model

    pca_path = _pca_file(pca)
    if not pca_path.is_file():
        raise UserError(f"{pca_path}: GIST PCA file not found (run `isc-qk gist-pca --train DIR --out DIR` first)")
    dim = PCAModel.load(pca_path).dim
    weights = None if (backbone_weights or "").lower() in ("", "none") else backbone_weights
    cfg = ModelConfig(backbone=backbone, backbone_weights=weights, head_hidden=head_hidden, dim=dim,
                      residual_scale=residual_scale, head_shortcut=head_shortcut, seed=seed)
    path = init_model(pca_path, cfg, out)
    _table("init-model", {"model": path, "backbone": backbone, "dim": dim, "head hidden": head_hidden})


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
    """Frozen-side feature table: concat(backbone(image), gist256) per image, float16,
    chunked and resumable (re-run the same command to continue)."""
    from ..precompute import merge_precomputed, precompute

    if merge:
        rep = merge_precomputed(out)
    else:
        if model is None or side is None or images is None:
            raise UserError("precompute needs --model, --side and --images (or --merge --out PREFIX)")
        rep = precompute(model, side, images, out, batch=batch, shard=shard, workers=workers, progress=progress)
    _warn_bad(rep.bad)
    _table("precompute", {"table": f"{rep.prefix}.npy", "rows": rep.rows, "width": rep.width,
                          "computed now": rep.computed, "unreadable": len(rep.bad), "seconds": rep.seconds})


def _train_cmd(side: str, model, keys, queries, out, manifest, negatives, tau, m, w_pos, w_neg, batch, lr, lr_alpha,
               epochs, steps, checkpoint_every, seed, chunk, workers, progress, distribute="default") -> None:
    from ..distribute import make_strategy
    from ..train import TrainConfig, train

    cfg = TrainConfig(side=side, negatives=negatives, tau=tau, m=m, w_pos=w_pos, w_neg=w_neg, batch_size=batch,
                      lr=lr, lr_alpha=lr_alpha, epochs=epochs, steps=steps, checkpoint_every=checkpoint_every,
                      seed=seed, chunk=chunk, workers=workers)
    rep = train(model, keys, queries, out, cfg, manifest=manifest, progress=progress, strategy=make_strategy(distribute))
    if rep.skipped:
        from ..progress import console

        console.print(f"{out}: this run is already finished; nothing to do")
    _table(f"train-{side}", {
        "model": rep.out_dir, "negatives": rep.negatives, "steps": rep.steps, "batch": rep.batch_size,
        "pairs (rows)": rep.items, "table rows": rep.table_rows, "resumed from step": rep.resumed_from,
        "loss, first 5 steps": rep.first_loss, "loss, last 5 steps": rep.last_loss,
        "s / step": rep.seconds_per_step, "seconds": rep.seconds, "replicas": rep.replicas,
    })


_OPT = dict(
    manifest=typer.Option(None, "--manifest", help="Augmentation manifest (default: QUERIES/manifest.csv)."),
    negatives=typer.Option("table", "--negatives", help="table: QK Iteration; batch: SimCLR-style in-batch negatives."),
    tau=typer.Option(0.07, "--tau", help="Temperature of P = exp(-d2/tau)."),
    m=typer.Option(10, "--m", help="Hard negatives per positive (B*M negatives per step)."),
    w_pos=typer.Option(1.0, "--w-pos"),
    w_neg=typer.Option(3.0, "--w-neg"),
    batch=typer.Option(32, "--batch", help="Batch size B."),
    lr=typer.Option(1e-4, "--lr", help="Adam learning rate (cosine decay)."),
    lr_alpha=typer.Option(0.5, "--lr-alpha", help="Final lr = lr * alpha."),
    epochs=typer.Option(1.0, "--epochs", help="Passes over the training pairs."),
    steps=typer.Option(None, "--steps", help="Exact number of steps (overrides --epochs)."),
    checkpoint_every=typer.Option(500, "--checkpoint-every", help="Steps between checkpoints."),
    seed=typer.Option(0, "--seed", help="Data-order seed."),
    chunk=typer.Option(8192, "--chunk", help="Table rows per head pass when mining negatives."),
    workers=typer.Option(2, "--workers", help="Image-decoding threads."),
    progress=typer.Option(True, "--progress/--no-progress"),
    distribute=typer.Option(
        "default", "--distribute",
        help="default: one device; mirrored: split each batch across local GPUs (or logical CPUs); "
        "multiworker: across machines (reads TF_CONFIG). Same loss as one device.",
    ),
)


@app.command("train-q")
def train_q_cmd(
    model: Path = typer.Option(..., "--model", help="Starting QK model folder."),
    keys: Path = typer.Option(..., "--keys", help="K feature table prefix (precompute --side k); an image folder with --negatives batch."),
    queries: Path = typer.Option(..., "--queries", help="Augmented images folder with manifest.csv."),
    out: Path = typer.Option(..., "--out", help="New model folder (checkpoints, losses, report)."),
    manifest: Optional[Path] = _OPT["manifest"], negatives: str = _OPT["negatives"], tau: float = _OPT["tau"],
    m: int = _OPT["m"], w_pos: float = _OPT["w_pos"], w_neg: float = _OPT["w_neg"], batch: int = _OPT["batch"],
    lr: float = _OPT["lr"], lr_alpha: float = _OPT["lr_alpha"], epochs: float = _OPT["epochs"],
    steps: Optional[int] = _OPT["steps"], checkpoint_every: int = _OPT["checkpoint_every"], seed: int = _OPT["seed"],
    chunk: int = _OPT["chunk"], workers: int = _OPT["workers"], progress: bool = _OPT["progress"],
    distribute: str = _OPT["distribute"],
) -> None:
    """Train Q backbone, Q head and K head; each step pushes B queries against ALL keys of the
    table (K head over the precomputed K features). Re-run the same command to resume."""
    _train_cmd("q", model, keys, queries, out, manifest, negatives, tau, m, w_pos, w_neg, batch, lr, lr_alpha,
               epochs, steps, checkpoint_every, seed, chunk, workers, progress, distribute)


@app.command("train-k")
def train_k_cmd(
    model: Path = typer.Option(..., "--model", help="Starting QK model folder (usually train-q's output)."),
    keys: Path = typer.Option(..., "--keys", help="Training images folder (the keys)."),
    queries: Path = typer.Option(..., "--queries", help="Q feature table prefix (precompute --side q on the augmented images); the augmented folder with --negatives batch."),
    out: Path = typer.Option(..., "--out", help="New model folder (checkpoints, losses, report)."),
    manifest: Optional[Path] = _OPT["manifest"], negatives: str = _OPT["negatives"], tau: float = _OPT["tau"],
    m: int = _OPT["m"], w_pos: float = _OPT["w_pos"], w_neg: float = _OPT["w_neg"], batch: int = _OPT["batch"],
    lr: float = _OPT["lr"], lr_alpha: float = _OPT["lr_alpha"], epochs: float = _OPT["epochs"],
    steps: Optional[int] = _OPT["steps"], checkpoint_every: int = _OPT["checkpoint_every"], seed: int = _OPT["seed"],
    chunk: int = _OPT["chunk"], workers: int = _OPT["workers"], progress: bool = _OPT["progress"],
    distribute: str = _OPT["distribute"],
) -> None:
    """Train K backbone, K head and Q head; each step pushes B keys against ALL queries of the
    table (Q head over the precomputed Q features). Re-run the same command to resume."""
    _train_cmd("k", model, keys, queries, out, manifest, negatives, tau, m, w_pos, w_neg, batch, lr, lr_alpha,
               epochs, steps, checkpoint_every, seed, chunk, workers, progress, distribute)


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
    from ..describe import describe, merge_descriptors

    if merge:
        rep = merge_descriptors(out)
    else:
        if model is None or side is None or images is None:
            raise UserError("describe needs --model, --side and --images (or --merge --out SET.h5)")
        rep = describe(model, side, images, out, batch=batch, shard=shard, workers=workers, progress=progress)
    _warn_bad(rep.bad)
    _table("describe", {"descriptors": rep.out, "images": rep.descriptors, "dim": rep.dim,
                        "computed now": rep.computed, "unreadable": len(rep.bad), "seconds": rep.seconds})
