"""QK Iteration training stages: train-q, train-k, and the in-batch (SimCLR-style) comparison.

train-q (paper fig. 3): every step, B edited images go through the Q backbone + Q head;
the K head runs over the precomputed K-backbone features of ALL T keys (`qk.precompute`); the
loss (paper eq. 1-4, `qk.loss`) pushes each query to its source key and away from the B*M
hardest of the B x T pairs. Trainable: Q backbone, Q head, K head. train-k is the mirror
(K backbone, K head, Q head against the precomputed Q features of the edited images).
``negatives="batch"`` trains both full models with negatives from the batch only.

`train` reads as its four steps: check the inputs against the output's record (a finished
run is skipped, one with other settings or inputs refused), `_prepare` the model and data,
`_run_steps`, `_finish`.

Exact resume: data order is a pure function of (seed, step) (`qk.data.batch_rows`), the
inputs are deterministic, and a checkpoint holds weights, optimizer slots, step and losses
(`formats.checkpoint`). Ctrl-C saves a checkpoint at the last finished step; after `kill -9`
the same call continues from the last periodic checkpoint. Either way the final weights equal
those of an uninterrupted run.

Output folder: a complete model folder (`QKModel.save`) plus ``train_config.json`` (the
record), ``train_report.json``, ``losses.csv`` and ``loss_curve.png``; ``cache/`` holds the
start vectors of the trainable side's images (computed once, resumable) and, while a stage
whose other head does not train runs, that side's descriptors of every table row
(`qk.cached_side`; removed when the stage finishes).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..configs import MAX_STEPS, TrainConfig
from ..errors import UserError
from ..formats.checkpoint import latest_checkpoint, restore_optimizer, save_checkpoint
from ..formats.feature_table import is_feature_table
from ..formats.images import list_images
from ..formats.losses import read_losses, write_losses
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input
from ..ui import ticker, warn
from .data import TrainData, build_train_data, default_manifest
from .precompute import frozen_table, precompute, table_input

KIND = "qk-train"
LOSSES_FILE = "losses.csv"
CURVE_FILE = "loss_curve.png"
CKPT_DIR = "checkpoints"
CACHE_DIR = "cache"


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
    mining: str = ""  # how negatives were mined (cached descriptors and where, or the head pass)
    peak_rss_gb: float = 0.0  # this process's peak resident memory when the stage finished (Linux)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("losses")
        return d


@dataclass
class _Run:
    """A stage with its inputs checked and loaded: what the step loop needs."""

    out: Path
    cfg: TrainConfig
    model: object
    data: TrainData
    arrays: object  # steps.ItemInputs: start vectors (Keras side) or precomputed head inputs (frozen)
    bad: list[str]
    batch: int
    per_epoch: int
    total: int
    strategy: object
    ckpt: object
    key_table: object = None  # qk.mining.KeyTable: the cached descriptors of a frozen other side


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
    feature_cache: str | os.PathLike | None = None,
    tensorboard: str | os.PathLike | None = None,
) -> TrainReport:
    """Run one training stage from `model_dir` into `out_dir` (resuming if it was interrupted).

    keys / queries: an image folder or a feature-table prefix, depending on the stage:
    train-q: keys = K table of the training images, queries = augmented folder (manifest.csv);
    train-k: keys = training image folder, queries = Q table of the augmented images;
    with a frozen backbone the trainable side may be its feature table too (train-q queries =
    Q table of the augmented images, train-k keys = K table of the training images);
    negatives="batch": both are image folders. `manifest` defaults to QUERIES/manifest.csv
    (for a table: the manifest of the folder it was computed from).
    `on_step(step, loss)` is called after every finished step (progress hooks, tests).
    `strategy`: a tf.distribute.Strategy (default: the current one); a non-default one splits
    each batch across its replicas with the single-device loss (`qk.distribute`).
    `feature_cache`: where a frozen (ONNX) backbone's feature tables of the trainable images are
    kept (default OUT/cache); the pipeline shares one folder, so every phase reuses them.
    `tensorboard`: a folder for TensorBoard event files of every step (`qk.tensorboard`), beside
    losses.csv; not part of the record (logging does not change the run).
    """
    from .tensorboard import check_logdir

    cfg.validate()
    check_logdir(tensorboard, {"--model": model_dir, "--keys": keys, "--queries": queries})
    t0 = time.perf_counter()
    out = Path(out_dir)
    manifest = Path(manifest) if manifest else default_manifest(queries)
    inputs = [_input("--model", model_dir), _input("--keys", keys), _input("--queries", queries),
              Input("--manifest", manifest, fingerprint.of_file(manifest) if manifest.is_file() else "missing")]
    art = Artifact(out, KIND, layout="folder", stage="train", owns=("qk-model",))
    resumable = lambda: (out / CKPT_DIR / "latest.json").is_file()  # noqa: E731
    writes = _written(model_dir, out, feature_cache)
    if cached_other_side(cfg) and feature_cache is not None:
        writes.append(out / CACHE_DIR)  # the other side's cached descriptors, while the stage runs
    with art.open(cfg, inputs, ignore=("checkpoint_every", "workers", "table_device", "first_pass"), resumable=resumable,
                  writes=writes) as state:
        if state.done:
            return _done_report(state.report, out, art)
        cache = Path(feature_cache) if feature_cache is not None else out / CACHE_DIR
        run = _prepare(model_dir, keys, queries, manifest, out, cfg, progress, strategy, cache)
        try:
            losses, stats, resumed_from, step_seconds = _run_steps(run, progress, on_step, tensorboard)
        finally:
            if run.key_table is not None:
                run.key_table.close()  # the first pass's threads; the table goes with `run`
        report = _finish(run, losses, stats, resumed_from, time.perf_counter() - t0, step_seconds)
        art.finish(report.summary())
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
    if cached_other_side(cfg):
        from .cached_side import remove_cached_side

        remove_cached_side(out / CACHE_DIR, _other(cfg))
    return report


def cached_other_side(cfg: TrainConfig) -> bool:
    """The other side is constant during this stage (its head does not train; its backbone never
    does in table mode): its descriptors of every table row are computed once (`qk.cached_side`)."""
    return cfg.negatives == "table" and not cfg.train_other_head


def _other(cfg: TrainConfig) -> str:
    return "k" if cfg.side == "q" else "q"


def _written(model_dir, out: Path, feature_cache) -> list[Path]:
    """Every path a training run writes into its folder: the model's files (named as the
    starting model's), the loss log and curve, checkpoints and the start-vector cache."""
    from ..models.qk_model import model_files

    model = [out / p.name for p in model_files(model_dir)]
    model += [p.with_suffix(".json") for p in model if p.suffix == ".npz"]  # the start PCA's .json
    own = model + [out / LOSSES_FILE, out / CURVE_FILE, out / CKPT_DIR]
    return own + ([out / CACHE_DIR] if feature_cache is None else [])


def _done_report(report: dict, out: Path, art: Artifact) -> TrainReport:
    """The report of a finished run, as saved (a damaged report is named, not a crash)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(TrainReport)} - {"losses", "skipped"}
    try:
        return TrainReport(**{k: v for k, v in report.items() if k in known},
                           losses=read_losses(out / LOSSES_FILE), skipped=True)
    except (TypeError, ValueError, KeyError):
        raise UserError(f"{art.report_path}: damaged report; delete it to run the stage again") from None


def _input(name: str, path: str | os.PathLike) -> Input:
    """A training input's fingerprint: a table by its record and files, a folder by its images."""
    from ..models.qk_model import files_fingerprint

    p = Path(path)
    if name == "--model":
        return Input(name, p, files_fingerprint(p))
    if is_feature_table(p):
        return table_input(name, p)
    if p.is_dir():
        return Input.of_images(name, p, list_images(p))
    raise UserError(f"{name} {p}: neither an image folder nor a feature table (PREFIX.npy)")


def _prepare(model_dir, keys, queries, manifest: Path, out: Path, cfg: TrainConfig, progress: bool, strategy,
             cache: Path) -> _Run:
    """Pair the data, load the model (or the checkpoint to resume), cache what the items need."""
    import tensorflow as tf

    from ..models.qk_model import QKModel

    data = build_train_data(cfg.side, cfg.negatives, keys, queries, manifest)
    strategy = strategy or tf.distribute.get_strategy()
    ckpt = latest_checkpoint(out / CKPT_DIR)
    with strategy.scope():
        model = QKModel.load(ckpt.path if ckpt else model_dir)
    cached = cached_other_side(cfg)
    if data.table is not None:
        _check_table_model(data.table_prefix, data.table, model, _other(cfg))
        # the cache build reads (and checks) every row anyway
        if not cached and not _table_is_finite(data.table):
            raise UserError(f"{data.table_prefix}: the feature table holds NaN or inf values; re-run its precompute")
    if data.items_prefix is not None and not model.frozen:
        what = "--queries" if cfg.side == "q" else "--keys"
        raise UserError(f"{what} {data.items_prefix}: a feature table of the trainable side works only with a frozen "
                        f"backbone (ONNX, or freeze_backbone); this model's {cfg.side.upper()} backbone trains, give "
                        "the image folder")
    if model.frozen:
        data, arrays, bad = _frozen_rows(data, model, model_dir, cache, cfg, progress)
    else:
        data, arrays, bad = _start_vectors(data, model, out, cfg, progress)
    if bad:
        warn(f"{len(bad)} unreadable image(s) left out of training: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    if data.n < 2:
        raise UserError(f"need at least 2 training pairs, found {data.n}")
    batch = min(cfg.batch_size, data.n)
    per_epoch = data.n // batch
    total = cfg.steps or max(1, math.ceil(cfg.epochs * per_epoch))
    if total > MAX_STEPS:
        raise UserError(f"--epochs {cfg.epochs:g} is {total:,} steps of {batch} pairs; at most {MAX_STEPS:,}")
    if not model.frozen:
        from ..stages.resources import pixels_per_batch

        pixels_per_batch(batch * (2 if cfg.negatives == "batch" else 1), model.spec.input_size)
    key_table = _key_table(model, data, out, cfg, progress) if cached else None
    return _Run(out, cfg, model, data, arrays, bad, batch, per_epoch, total, strategy, ckpt, key_table)


def _key_table(model, data: TrainData, out: Path, cfg: TrainConfig, progress: bool):
    """The frozen other side's descriptors of every table row: built once per phase under
    OUT/cache (resumable), then placed for mining (`--table-device`)."""
    from .cached_side import cached_side, open_cached_side
    from .mining import KeyTable

    other = _other(cfg)
    prefix = cached_side(model.head(other), other, data.table, data.table_prefix, out / CACHE_DIR, progress)
    return KeyTable(open_cached_side(prefix), cfg.table_device, first_pass=cfg.first_pass)


def _start_vectors(data: TrainData, model, out: Path, cfg: TrainConfig, progress: bool):
    """Start vectors of the trainable images (and of the partners in batch mode), cached once;
    items whose image cannot be read are dropped."""
    from .start_cache import start_vectors
    from .steps import ItemInputs

    own = "keys" if cfg.negatives == "batch" else {"q": "queries", "k": "keys"}[cfg.side]
    slug = model.start.slug
    rows, ids, bad = start_vectors(data.items, model.start, out / CACHE_DIR / f"{slug}256-{own}", cfg.workers,
                                   progress, own)
    data = data.filter(set(ids))
    partner_rows = None
    if data.partners is not None:
        prow, pids, pbad = start_vectors(data.partners, model.start, out / CACHE_DIR / f"{slug}256-queries",
                                         cfg.workers, progress, "queries")
        bad = bad + pbad
        data = data.keep_partners(set(pids))
        partner_rows = _rows_of(data.partners, pids, prow, model.cfg.dim)
    return data, ItemInputs(_rows_of(data.items, ids, rows, model.cfg.dim), partner_rows), bad


def _frozen_rows(data: TrainData, model, model_dir, cache: Path, cfg: TrainConfig, progress: bool):
    """A frozen backbone's side needs no decoding while training: its head inputs (features +
    start) are precomputed once per image folder into `cache` (`frozen_table`) and read by id."""
    from ..formats.feature_table import open_feature_table
    from .steps import ItemInputs, TableRows

    own_side = "k" if cfg.negatives == "batch" else cfg.side
    if data.items_prefix is not None:  # given as its table: rows are read from it per batch
        ids, rows = open_feature_table(data.items_prefix)
        _check_table_model(data.items_prefix, rows, model, own_side)
        at = {i: r for r, i in enumerate(ids)}
        index = np.array([at[f.id] for f in data.items], np.int64)
        return data, ItemInputs(TableRows(rows, index), None, frozen=True), []
    rows, ids, bad = _table_rows(model, model_dir, own_side, data.items, cache, cfg, progress)
    data = data.filter(set(ids))
    partner_rows = None
    if data.partners is not None:
        prow, pids, pbad = _table_rows(model, model_dir, "q", data.partners, cache, cfg, progress)
        bad = bad + pbad
        data = data.keep_partners(set(pids))
        partner_rows = _rows_of(data.partners, pids, prow, prow.shape[1])
    at = {i: r for r, i in enumerate(ids)}
    index = np.array([at[f.id] for f in data.items], np.int64)
    return data, ItemInputs(TableRows(rows, index), partner_rows, frozen=True), bad


def _table_rows(model, model_dir, side: str, files, cache: Path, cfg: TrainConfig, progress: bool):
    from ..formats.feature_table import open_feature_table

    folder = Path(files[0].path).parent
    prefix = frozen_table(model, side, folder, cache)
    rep = precompute(model_dir, side, folder, prefix, workers=cfg.workers, progress=progress)
    ids, table = open_feature_table(prefix)
    return table, ids, rep.bad


def _rows_of(files, ids: list[str], rows: np.ndarray, width: int) -> np.ndarray:
    """Rows of `rows` (indexed like `ids`) in the order of `files` (all of which are in `ids`)."""
    at = {i: r for r, i in enumerate(ids)}
    idx = np.array([at[f.id] for f in files], dtype=np.int64)  # kept in its dtype: float16 tables stay half
    return np.asarray(rows[idx]) if len(idx) else np.zeros((0, width), np.float32)


def _check_table_model(prefix, table: np.ndarray, model, frozen: str) -> None:
    """The table must hold THIS model's frozen-side features, or training is silently wrong."""
    from .precompute import table_config

    width = model.spec.dim + model.cfg.dim
    if table.shape[1] != width:
        raise UserError(f"{prefix}: table has {table.shape[1]} columns, this model needs {width}")
    tcfg = table_config(prefix)
    if tcfg is None:
        warn(f"{prefix}: no record beside it; cannot check it was computed with this model")
        return
    if tcfg.side != frozen:
        raise UserError(f"{prefix}: table holds {tcfg.side.upper()} features, this stage needs {frozen.upper()} features")
    if tcfg.model_fingerprint != model.backbone_fingerprint(frozen):
        raise UserError(
            f"{prefix}: computed with another {frozen.upper()} backbone than this model's; "
            f"re-run `isc-qk precompute --model <this model> --side {frozen}`"
        )


def lr_schedule(cfg: TrainConfig, total: int):
    """Cosine decay from lr to lr * alpha over the run, after `cfg.warmup` of it rising from 0."""
    import keras

    warm = int(round(cfg.warmup * total))
    if not warm:
        return keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=total, alpha=cfg.lr_alpha)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, total - warm), alpha=cfg.lr_alpha,
                                                  warmup_target=cfg.lr, warmup_steps=warm)


def _run_steps(run: _Run, progress: bool, on_step, tensorboard=None) -> tuple[list[float], list[dict], int, float]:
    """The step loop from the checkpoint (if any) to the end; Ctrl-C saves a checkpoint first."""
    import keras
    import tensorflow as tf

    from .distribute import DistributedStepper, is_default
    from ..stages.runner import decode_pool, one_ahead
    from .steps import Stepper, batch_loader, trainable_variables
    from .tensorboard import TrainLog

    cfg, model, out = run.cfg, run.model, run.out
    variables = trainable_variables(model, cfg)
    with run.strategy.scope():
        schedule = lr_schedule(cfg, run.total)
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        optimizer.build(variables)
    step, losses, stats_log = 0, [], []
    if run.ckpt:
        restore_optimizer(optimizer, run.ckpt)
        step = run.ckpt.step
        losses, stats_log = list(run.ckpt.state.get("losses", []))[:step], list(run.ckpt.state.get("stats", []))[:step]
    resumed_from = step
    make = Stepper if is_default(run.strategy) else (lambda *a, **kw: DistributedStepper(run.strategy, *a, **kw))
    stepper = make(model, cfg, run.data, variables, optimizer, key_table=run.key_table)
    pool = decode_pool(cfg.workers)
    inputs_of = batch_loader(cfg, run.data, run.arrays, model, run.batch, pool)

    def checkpoint(at: int) -> None:
        save_checkpoint(out / CKPT_DIR, at, model, optimizer, {"losses": losses[:at], "stats": stats_log[:at]})

    def last_saved(at: int) -> int:
        return max(resumed_from, (at // cfg.checkpoint_every) * cfg.checkpoint_every)

    t0, in_update = time.perf_counter(), False
    tb = TrainLog(tensorboard)
    try:
        with ticker(progress, run.total, f"train-{cfg.side} ({cfg.negatives})") as tick, \
                closing(one_ahead(inputs_of(s) for s in range(step, run.total))) as batches:
            tick(step)
            t_prev = time.perf_counter()
            for rows, inp in batches:
                loss, stats, grads = stepper.loss_and_grads(rows, {k: tf.constant(v) for k, v in inp.items()})
                loss_f = float(loss)
                if not math.isfinite(loss_f):
                    raise UserError(_nonfinite_message(loss_f, step + 1, run))
                in_update = True
                stepper.apply(grads)
                if not _all_finite(variables):  # never checkpoint or save weights that are NaN or inf
                    raise UserError(_nonfinite_weights_message(step + 1, run, last_saved(step)))
                step += 1
                losses.append(loss_f)
                now = time.perf_counter()  # wall time of the step, waiting for its batch included
                stats_log.append({**{k: v for k, v in stats.items() if k != "loss"}, "step_s": round(now - t_prev, 4)})
                t_prev = now
                in_update = False
                tb.step(step, loss_f, stats, float(schedule(step - 1)))
                tick(1)
                if step % cfg.checkpoint_every == 0 and step < run.total:
                    checkpoint(step)
                if on_step:
                    on_step(step, loss_f)
    except KeyboardInterrupt:
        if not in_update and step > resumed_from:  # weights/optimizer/step agree: keep the work
            checkpoint(step)
        raise
    finally:
        pool.shutdown(wait=True)
        tb.close()
    return losses, stats_log, resumed_from, time.perf_counter() - t0


def _nonfinite_message(loss: float, step: int, run: _Run) -> str:
    """Tell a broken input (NaN/inf in the table) from a diverging run."""
    if run.data.table is not None and not _table_is_finite(run.data.table):
        return f"{run.data.table_prefix}: the feature table holds NaN or inf values; re-run its precompute"
    return f"loss became {loss} at step {step}; lower --lr"


def _all_finite(variables) -> bool:
    return all(np.isfinite(v.numpy()).all() for v in variables)


def _nonfinite_weights_message(step: int, run: _Run, saved: int) -> str:
    kept = f"the checkpoint of step {saved} is kept" if saved else "nothing was saved"
    return (f"the weights became NaN or inf at step {step} (--tau {run.cfg.loss.tau:g}, --lr {run.cfg.lr:g}): "
            f"{kept}; try a larger --tau or a smaller --lr")


def _table_is_finite(table: np.ndarray, chunk: int = 65536) -> bool:
    from .mining import read_rows  # file reads: checking a 12 GB table must not map it all into the process

    return all(np.isfinite(read_rows(table, s, s + chunk)).all() for s in range(0, len(table), chunk))


def _finish(run: _Run, losses: list[float], stats: list[dict], resumed_from: int, seconds: float,
            step_seconds: float) -> TrainReport:
    """Save the model folder, the loss log and curve; the report is the caller's last write."""
    from ..plots import plot_losses

    run.model.save(run.out)
    write_losses(run.out / LOSSES_FILE, losses, stats)
    plot_losses(run.out / CURVE_FILE, losses, f"train-{run.cfg.side}, {run.cfg.negatives} negatives")
    return TrainReport(
        out_dir=str(run.out), side=run.cfg.side, negatives=run.cfg.negatives, steps=run.total,
        steps_per_epoch=run.per_epoch, batch_size=run.batch, items=run.data.n,
        table_rows=int(run.data.table.shape[0]) if run.data.table is not None else 0, losses=losses,
        first_loss=_mean(losses[:5]), last_loss=_mean(losses[-5:]), resumed_from=resumed_from,
        seconds=round(seconds, 3), seconds_per_step=round(step_seconds / max(1, run.total - resumed_from), 4),
        bad_images=run.bad, replicas=run.strategy.num_replicas_in_sync, mining=_mining_text(run),
        peak_rss_gb=_peak_rss_gb(),
    )


def _peak_rss_gb() -> float:
    """VmHWM of this process (its own peak, unlike a parent's rusage, which counts the memory
    of the process it was forked from); 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e9, 3)
    except OSError:
        pass
    return 0.0


def _mining_text(run: _Run) -> str:
    if run.cfg.negatives == "batch":
        return "in-batch"
    if run.key_table is not None:
        return run.key_table.describe()
    return f"{_other(run.cfg).upper()} head over the feature table, chunks of {run.cfg.chunk}"


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")
