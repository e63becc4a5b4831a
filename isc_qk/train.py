"""QK Iteration training stages: train-q, train-k, and the in-batch (SimCLR-style) comparison.

train-q (paper fig. 3): every step, B edited images go through the Q backbone + Q head;
the K head runs over the precomputed K-backbone features of ALL T keys (`precompute`); the
loss (paper eq. 1-4, `loss.qk_loss`) pushes each query to its source key and away from the
B*M hardest of the B x T pairs. Trainable: Q backbone, Q head, K head. train-k is the mirror
(K backbone, K head, Q head against the precomputed Q features of the edited images).
``negatives="batch"`` trains both full models with negatives from the batch only.

Exact resume: data order is a pure function of (seed, step) (`train_data.batch_rows`), the
inputs are deterministic, and a checkpoint holds weights, optimizer slots, step and losses
(`checkpoint`). Ctrl-C saves a checkpoint at the last finished step; after `kill -9` the same
call continues from the last periodic checkpoint. Either way the final weights equal those of
an uninterrupted run.

Output folder: a complete model folder (`QKModel.save`) plus ``train_config.json``,
``losses.csv``, ``loss_curve.png`` and ``train_report.json``; ``cache/`` holds the GIST256
of the trainable side's images (computed once, resumable).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import check_config, save_config
from .errors import UserError
from .io import atomic_path, read_json, write_json
from .row_store import fill_rows, finalize_table, open_table, side_path, table_paths
from .train_data import TrainData, batch_rows, build_train_data, partner_choice, warn

CONFIG_FILE = "train_config.json"
REPORT_FILE = "train_report.json"
LOSSES_FILE = "losses.csv"
CURVE_FILE = "loss_curve.png"
CKPT_DIR = "checkpoints"
CACHE_DIR = "cache"
KIND = "qk-train"


@dataclass
class TrainConfig:
    """One training stage's settings (defaults: the paper's)."""

    side: str = "q"  # which side's backbone trains: "q" (train-q) or "k" (train-k)
    negatives: str = "table"  # "table": QK Iteration; "batch": SimCLR-style in-batch negatives
    tau: float = 0.07
    m: int = 10
    w_pos: float = 1.0
    w_neg: float = 3.0
    batch_size: int = 32
    lr: float = 1e-4
    lr_alpha: float = 0.5  # cosine decay to lr * alpha over the run
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs when set
    checkpoint_every: int = 500
    seed: int = 0
    chunk: int = 8192  # table rows per head pass while mining negatives (loss.DEFAULT_CHUNK)
    workers: int = 2  # image-decoding threads

    def validate(self) -> None:
        if self.side not in ("q", "k"):
            raise UserError(f"side must be q or k, not {self.side!r}")
        if self.negatives not in ("table", "batch"):
            raise UserError(f"--negatives must be 'table' or 'batch', not {self.negatives!r}")
        for name in ("tau", "lr", "epochs"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("m", "batch_size", "checkpoint_every", "chunk", "workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        if not 0 <= self.lr_alpha <= 1:
            raise UserError(f"--lr-alpha must be in [0, 1], got {self.lr_alpha}")
        if self.w_pos < 0 or self.w_neg < 0:
            raise UserError("--w-pos and --w-neg must be >= 0")

    def loss_config(self):
        from .loss import LossConfig

        return LossConfig(tau=self.tau, m=self.m, w_pos=self.w_pos, w_neg=self.w_neg)


@dataclass
class TrainReport:
    out_dir: str
    side: str
    negatives: str
    steps: int
    steps_per_epoch: int
    batch_size: int
    items: int
    table_rows: int
    losses: list[float] = field(default_factory=list)
    first_loss: float = float("nan")  # mean of the first 5 steps
    last_loss: float = float("nan")  # mean of the last 5 steps
    resumed_from: int = 0
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    skipped: bool = False  # the output folder already held this finished run
    bad_images: list[str] = field(default_factory=list)
    replicas: int = 1  # devices the batch was split across (tf.distribute)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("losses")
        return d


# --------------------------------------------------------------------------- init-model
def init_model(pca_path: str | os.PathLike, cfg, out_dir: str | os.PathLike) -> Path:
    """Create the starting QK model folder (pretrained backbones, GIST-residual heads).

    A folder that already holds a model with the same ModelConfig is kept (idempotent);
    one with another config is refused rather than overwritten.
    """
    from .gist_pca import PCAModel
    from .model import CONFIG_FILE as MODEL_CONFIG, QKModel

    out = Path(out_dir)
    pca_path = Path(pca_path)
    if not pca_path.is_file():
        raise UserError(f"{pca_path}: GIST PCA file not found (run the GIST PCA fit first)")
    if (out / MODEL_CONFIG).is_file():
        old = read_json(out / MODEL_CONFIG).get("config", {})
        new = dataclasses.asdict(cfg)
        diff = sorted(k for k in new if old.get(k) != new[k])
        if diff:
            raise UserError(f"{out}: holds a model with other settings ({', '.join(diff)}); choose another --out")
        QKModel.load(out)  # complete and readable, else UserError
        return out
    try:
        pca = PCAModel.load(pca_path)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{pca_path}: not a GIST PCA model ({type(e).__name__}: {e})") from None
    QKModel.create(cfg, pca).save(out)
    return out


# --------------------------------------------------------------------------- helpers
def model_files_hash(model_dir: str | os.PathLike) -> str:
    """sha256 of a model folder's weight and PCA files: the starting point of a run."""
    from .model import PCA_FILE, weights_files

    h = hashlib.sha256()
    for p in [*weights_files(model_dir).values(), Path(model_dir) / PCA_FILE]:
        if not p.is_file():
            raise UserError(f"{model_dir}: not a complete model folder (missing {p.name})")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _gist_cache(files, pca, prefix: Path, workers: int, progress: bool, what: str) -> tuple[np.ndarray, list[str], list[str]]:
    """GIST256 of `files` as a float32 table under ``prefix`` (resumable); (rows, ids, bad)."""
    from .model_inputs import ChunkReader
    from .progress import ticker

    fp = hashlib.sha256()
    for f in files:
        fp.update(f"{f.id}\0{f.path}\0".encode())
    fp.update(np.ascontiguousarray(pca.components).tobytes())
    fp.update(np.ascontiguousarray(pca.mean).tobytes())
    key = {"files": len(files), "fingerprint": fp.hexdigest()[:16], "dim": pca.dim}
    meta = side_path(prefix, "config.json")
    npy, _ = table_paths(prefix)
    if npy.is_file() and meta.is_file() and read_json(meta).get("config") == key:
        ids, x = open_table(prefix)
        return np.asarray(x, dtype=np.float32), ids, read_json(meta).get("bad", [])
    if meta.is_file() and read_json(meta).get("config") != key:  # stale cache of other images
        for p in prefix.parent.glob(prefix.name + ".*"):
            p.unlink()
    write_json(meta, {"config": key})
    chunk = 256
    with ChunkReader(files, None, pca, chunk, workers) as reader, ticker(progress, len(files), f"GIST {what}") as tick:
        result = fill_rows(
            side_path(prefix, "partial.npy"), side_path(prefix, "progress.json"), len(files), pca.dim, "float32",
            lambda s, e: (lambda b: (b.gist256, b.bad))(reader(s, e)), chunk, tick,
        )
    bad = [f"{files[i].path}: {why}" for i, why in sorted(result.bad.items())]
    ids = finalize_table(result, [f.id for f in files], prefix)
    side_path(prefix, "progress.json").unlink(missing_ok=True)
    write_json(meta, {"config": key, "bad": bad})
    _, x = open_table(prefix)
    return np.asarray(x, dtype=np.float32), ids, bad


def _check_table_model(data: TrainData, model, frozen: str) -> None:
    """The table must hold THIS model's frozen-side features, or training is silently wrong."""
    from .precompute import side_fingerprint, table_config

    width = model.spec.feature_dim + model.cfg.dim
    if data.table.shape[1] != width:
        raise UserError(f"{data.table_prefix}: table has {data.table.shape[1]} columns, this model needs {width}")
    tcfg = table_config(data.table_prefix)
    if tcfg is None:
        warn(f"{data.table_prefix}: no config.json; cannot check it was computed with this model")
        return
    if tcfg.side != frozen:
        raise UserError(f"{data.table_prefix}: table holds {tcfg.side.upper()} features, this stage needs {frozen.upper()} features")
    if tcfg.model_fingerprint != side_fingerprint(model, frozen):
        raise UserError(
            f"{data.table_prefix}: computed with another {frozen.upper()} backbone than this model's; "
            f"re-run `isc-qk precompute --model <this model> --side {frozen}`"
        )


def _write_losses(path: Path, losses: list[float], stats: list[dict]) -> None:
    keys = sorted({k for s in stats for k in s})
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["step", "loss", *keys])
            for i, (loss, s) in enumerate(zip(losses, stats), start=1):
                w.writerow([i, f"{loss:.6g}", *(_fmt(s.get(k)) for k in keys)])


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def _plot_losses(path: Path, losses: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    w = max(1, len(losses) // 50)
    if w > 1:
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


# --------------------------------------------------------------------------- training
class _Stepper:
    """Forward/backward of one step. Forward passes are tf.functions (no XLA); the table loss
    (NumPy mining + head re-run on the selected rows) runs eagerly under the same tape."""

    def __init__(self, model, cfg: TrainConfig, data: TrainData, variables, optimizer) -> None:
        import tensorflow as tf

        self.model, self.cfg, self.data = model, cfg, data
        self.variables, self.optimizer = variables, optimizer
        self.loss_cfg = cfg.loss_config()
        self.describe = {s: tf.function(lambda px, g, s=s: model.describe(s, px, g)) for s in ("q", "k")}

        @tf.function
        def apply(grads):
            optimizer.apply_gradients(zip(grads, variables))

        self.apply = apply

    def loss_and_grads(self, rows: np.ndarray, inputs: dict) -> tuple[object, dict, list]:
        import tensorflow as tf

        from .loss import in_batch_loss, qk_loss

        cfg = self.cfg
        with tf.GradientTape() as tape:
            if cfg.negatives == "batch":
                q = self.describe["q"](inputs["q_px"], inputs["q_g"])
                k = self.describe["k"](inputs["k_px"], inputs["k_g"])
                loss = in_batch_loss(q, k, self.loss_cfg)
                stats: dict = {}
            else:
                x = self.describe[cfg.side](inputs["px"], inputs["g"])
                pos = np.array([(r, t) for r, item in enumerate(rows) for t in self.data.positives[item]], np.int64)
                other = "k" if cfg.side == "q" else "q"
                loss, stats = qk_loss(x, self.model.head(other), self.data.table, pos, self.loss_cfg, chunk=cfg.chunk)
        grads = tape.gradient(loss, self.variables)
        return loss, stats, grads


def _trainable(model, cfg: TrainConfig) -> list:
    if cfg.negatives == "batch":
        parts = [model.q_backbone, model.q_head, model.k_backbone, model.k_head]
    elif cfg.side == "q":
        parts = [model.q_backbone, model.q_head, model.k_head]
    else:
        parts = [model.k_backbone, model.k_head, model.q_head]
    return [v for p in parts for v in p.trainable_weights]


def train(
    model_dir: str | os.PathLike,
    keys: str | os.PathLike,
    queries: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    manifest: str | os.PathLike | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    strategy=None,
) -> TrainReport:
    """Run one training stage from `model_dir` into `out_dir` (resuming if it was interrupted).

    keys / queries: an image folder or a feature-table prefix, depending on the stage:
    train-q: keys = K table of the training images, queries = augmented folder (manifest.csv);
    train-k: keys = training image folder, queries = Q table of the augmented images;
    negatives="batch": both are image folders. `manifest` defaults to QUERIES/manifest.csv
    (for a table: the manifest of the folder it was computed from).
    `on_step(step, loss)` is called after every finished step (progress hooks, tests).
    `strategy`: a tf.distribute.Strategy (default: the current one); a non-default one splits
    each batch across its replicas with the single-device loss (`distribute.make_strategy`).
    """
    import keras
    import tensorflow as tf

    from .model import QKModel
    from .model_inputs import decode_pool, load_batch, one_ahead
    from .checkpoint import latest_checkpoint, restore_optimizer, save_checkpoint
    from .distribute import DistributedStepper, is_default

    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.resolve() == Path(model_dir).resolve():
        raise UserError(f"{out}: the output folder must differ from --model")
    start_hash = model_files_hash(model_dir)
    data = build_train_data(cfg.side, cfg.negatives, keys, queries, manifest)
    strategy = strategy or tf.distribute.get_strategy()
    ckpt = latest_checkpoint(out / CKPT_DIR)
    with strategy.scope():
        model = QKModel.load(ckpt.path if ckpt else model_dir)
    frozen = "k" if cfg.side == "q" else "q"
    if data.table is not None:
        _check_table_model(data, model, frozen)

    # GIST256 of the trainable images (and of the partners in batch mode), cached once
    bad: list[str] = []
    name = {"q": "queries", "k": "keys"}
    own = "keys" if cfg.negatives == "batch" else name[cfg.side]
    g_items, ids, b = _gist_cache(data.items, model.pca, out / CACHE_DIR / f"gist256-{own}", cfg.workers, progress, own)
    bad += b
    data = data.filter(set(ids))
    g_partners = None
    if data.partners is not None:
        g_partners_all, pids, b = _gist_cache(data.partners, model.pca, out / CACHE_DIR / "gist256-queries", cfg.workers, progress, "queries")
        bad += b
        row_of = {p: i for i, p in enumerate(pids)}
        data = data.keep_partners(set(pids))
        g_partners = np.zeros((len(data.partners), model.cfg.dim), np.float32)
        for j, f in enumerate(data.partners):
            if f.id in row_of:
                g_partners[j] = g_partners_all[row_of[f.id]]
    item_row = {i: r for r, i in enumerate(ids)}
    g_items = g_items[[item_row[f.id] for f in data.items]]
    if bad:
        warn(f"{len(bad)} unreadable image(s) left out of training: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    if data.n < 2:
        raise UserError(f"need at least 2 training pairs, found {data.n}")

    batch = min(cfg.batch_size, data.n)
    per_epoch = data.n // batch
    total = cfg.steps or max(1, math.ceil(cfg.epochs * per_epoch))
    record = {
        **asdict(cfg),
        "effective_batch": batch,
        "total_steps": total,
        "data_fingerprint": data.fingerprint(),
        "start_model_hash": start_hash,
        "items": data.n,
        "table_rows": int(data.table.shape[0]) if data.table is not None else 0,
    }
    same = check_config(out / CONFIG_FILE, record, KIND, ignore=("checkpoint_every", "workers"))
    if same and (out / REPORT_FILE).is_file():
        rep = read_json(out / REPORT_FILE)
        if rep.get("steps") == total:
            return TrainReport(**{**rep, "losses": _read_losses(out / LOSSES_FILE), "skipped": True})
    save_config(out / CONFIG_FILE, record, KIND)

    variables = _trainable(model, cfg)
    with strategy.scope():
        schedule = keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=total, alpha=cfg.lr_alpha)
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        optimizer.build(variables)
    step, losses, stats_log = 0, [], []
    if ckpt:
        restore_optimizer(optimizer, ckpt)
        step = ckpt.step
        losses = list(ckpt.state.get("losses", []))[:step]
        stats_log = list(ckpt.state.get("stats", []))[:step]
    resumed_from = step
    if is_default(strategy):
        stepper = _Stepper(model, cfg, data, variables, optimizer)
    else:  # the batch is split across replicas; same loss and gradients (distribute.py)
        stepper = DistributedStepper(strategy, model, cfg, data, variables, optimizer)
    size = model.spec.input_size
    pool = decode_pool(cfg.workers)

    def inputs_of(s: int):
        def task():
            rows = batch_rows(cfg.seed, s, data.n, batch)
            if cfg.negatives == "batch":
                qrows = partner_choice(cfg.seed, s, data.n, batch, data.partner_of, rows)
                kb = load_batch([data.items[r] for r in rows], 0, size, None, pool)
                qb = load_batch([data.partners[j] for j in qrows], 0, size, None, pool)
                _no_bad(kb, qb)
                return rows, {"k_px": kb.pixels, "k_g": g_items[rows], "q_px": qb.pixels, "q_g": g_partners[qrows]}
            b = load_batch([data.items[r] for r in rows], 0, size, None, pool)
            _no_bad(b)
            return rows, {"px": b.pixels, "g": g_items[rows]}

        return task

    def checkpoint(at: int) -> None:
        save_checkpoint(out / CKPT_DIR, at, model, optimizer, {"losses": losses[:at], "stats": stats_log[:at]})

    from .progress import ticker

    t_steps = time.perf_counter()
    in_update = False
    try:
        with ticker(progress, total, f"train-{cfg.side} ({cfg.negatives})") as tick, closing(
            one_ahead(inputs_of(s) for s in range(step, total))
        ) as batches:
            if tick and step:
                tick(step)
            for rows, inp in batches:
                loss, stats, grads = stepper.loss_and_grads(rows, {k: tf.constant(v) for k, v in inp.items()})
                loss_f = float(loss)
                if not math.isfinite(loss_f):
                    raise UserError(f"loss became {loss_f} at step {step + 1}; lower --lr")
                in_update = True
                stepper.apply(grads)
                step += 1
                losses.append(loss_f)
                stats_log.append({k: v for k, v in stats.items() if k != "loss"})
                in_update = False
                if tick:
                    tick(1)
                if step % cfg.checkpoint_every == 0 and step < total:
                    checkpoint(step)
                if on_step:
                    on_step(step, loss_f)
    except KeyboardInterrupt:
        if not in_update and step > resumed_from:  # weights/optimizer/step agree: keep the work
            checkpoint(step)
        raise
    finally:
        pool.shutdown(wait=True)

    elapsed = time.perf_counter() - t_steps
    model.save(out)
    _write_losses(out / LOSSES_FILE, losses, stats_log)
    _plot_losses(out / CURVE_FILE, losses, f"train-{cfg.side}, {cfg.negatives} negatives")
    report = TrainReport(
        out_dir=str(out),
        side=cfg.side,
        negatives=cfg.negatives,
        steps=total,
        steps_per_epoch=per_epoch,
        batch_size=batch,
        items=data.n,
        table_rows=record["table_rows"],
        losses=losses,
        first_loss=_mean(losses[:5]),
        last_loss=_mean(losses[-5:]),
        resumed_from=resumed_from,
        seconds=round(time.perf_counter() - t0, 3),
        seconds_per_step=round(elapsed / max(1, total - resumed_from), 4),
        bad_images=bad,
        replicas=strategy.num_replicas_in_sync,
    )
    write_json(out / REPORT_FILE, report.summary())
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
    return report


def _no_bad(*batches) -> None:
    for b in batches:
        if b.bad:
            raise UserError(f"image became unreadable during training: {next(iter(b.bad.values()))}")


def _read_losses(path: Path) -> list[float]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]
