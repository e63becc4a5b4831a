"""Frozen-side feature tables: concat(backbone(image), gist256) for every image, float16 on disk.

Why: in QK Iteration one backbone is frozen while the other side trains, so its features
never change during that stage. Computing them once lets every training step push against
ALL T images: only the (cheap) head runs over the table each step. Table row i is exactly
the head input `QKModel.features(side, ...)` of image i, stored as float16 (the paper's
mixed precision; halves memory and disk for a million rows).

Layout: ``PREFIX.npy`` (float16, n x (feature_dim + dim), memory-mappable), ``PREFIX.ids.txt``,
``PREFIX.config.json`` (model fingerprint, side, images folder...). Work is chunked and
resumable (`row_store`); `--shard I/N` writes ``PREFIX.shard-I-of-N.*`` and
`merge_precomputed` concatenates the shards into the table an unsharded run would write.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import check_config, load_config, save_config
from .errors import UserError
from .images import list_images
from .model_inputs import ChunkReader
from .row_store import concat_tables, fill_rows, finalize_table, side_path, table_paths
from .progress import ticker
from .shard import find_shards
from .shard import Shard

KIND = "qk-feature-table"
TABLE_DTYPE = "float16"


@dataclass
class PrecomputeConfig:
    """Everything the table's content depends on (batch size and workers do not matter)."""

    side: str
    images_dir: str
    n_images: int
    shard: str
    backbone: str
    input_size: int
    feature_dim: int
    dim: int
    model_fingerprint: str  # hash of this side's backbone weights + the GIST PCA
    dtype: str = TABLE_DTYPE


@dataclass
class PrecomputeReport:
    prefix: str
    rows: int
    width: int
    bad: list[str] = field(default_factory=list)  # "path: reason" of images left out
    computed: int = 0  # rows computed by this call (0: the table was already finished)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def side_fingerprint(model, side: str) -> str:
    """sha256 over one side's backbone weights and the GIST PCA: what a frozen table depends on.

    Hashing values (not files) means re-saving the same weights keeps the fingerprint.
    """
    h = hashlib.sha256()
    for w in model.backbone(side).weights:
        a = np.ascontiguousarray(w.numpy())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(np.ascontiguousarray(model.pca.mean).tobytes())
    h.update(np.ascontiguousarray(model.pca.components).tobytes())
    return h.hexdigest()[:16]


def shard_prefix(prefix: str | os.PathLike, shard: Shard) -> str:
    s = os.fspath(prefix)
    return (s[:-4] if s.endswith(".npy") else s) + shard.suffix()


def table_config(prefix: str | os.PathLike) -> PrecomputeConfig | None:
    """The config saved next to a table, or None if it has none (made by another tool)."""
    path = side_path(prefix, "config.json")
    return load_config(path, PrecomputeConfig) if path.is_file() else None


def precompute(
    model_dir: str | os.PathLike,
    side: str,
    images_dir: str | os.PathLike,
    out_prefix: str | os.PathLike,
    batch: int = 32,
    shard: Shard | str | None = None,
    workers: int = 2,
    progress: bool = True,
) -> PrecomputeReport:
    """Write the feature table of `side` ("q" or "k") for every image of `images_dir`.

    Resumes an interrupted run, skips a finished one with the same settings, and refuses to
    overwrite a table made with other settings (another model, side or folder).
    """
    from .model import QKModel

    if side not in ("q", "k"):
        raise UserError(f"--side must be q or k, not {side!r}")
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    t0 = time.perf_counter()
    files = shard.select(list_images(images_dir))
    if not files:
        raise UserError(f"{images_dir}: shard {shard.index}/{shard.count} has no images")
    model = QKModel.load(model_dir)
    prefix = shard_prefix(out_prefix, shard)
    cfg = PrecomputeConfig(
        side=side,
        images_dir=str(Path(images_dir).resolve()),
        n_images=len(files),
        shard=f"{shard.index}/{shard.count}",
        backbone=model.cfg.backbone,
        input_size=model.spec.input_size,
        feature_dim=model.spec.feature_dim,
        dim=model.cfg.dim,
        model_fingerprint=side_fingerprint(model, side),
    )
    cfg_path = side_path(prefix, "config.json")
    npy, _ = table_paths(prefix)
    progress_json = side_path(prefix, "progress.json")
    partial = side_path(prefix, "partial.npy")
    if check_config(cfg_path, cfg, KIND) and npy.is_file():
        ids, x = _open(prefix)
        return PrecomputeReport(str(prefix), len(ids), x.shape[1], _read_bad(prefix), 0, time.perf_counter() - t0)
    save_config(cfg_path, cfg, KIND)

    import tensorflow as tf

    features = tf.function(lambda px, g: model.features(side, px, g), reduce_retracing=True)
    width = cfg.feature_dim + cfg.dim

    with ChunkReader(files, cfg.input_size, model.pca, batch, workers) as reader, ticker(progress, len(files), f"precompute {side}") as tick:

        def compute(start: int, stop: int):
            b = reader(start, stop)
            rows = features(tf.constant(b.pixels), tf.constant(b.gist256)).numpy()
            return rows.astype(np.float16), b.bad

        result = fill_rows(partial, progress_json, len(files), width, TABLE_DTYPE, compute, batch, tick)
    bad = [f"{files[i].path}: {why}" for i, why in sorted(result.bad.items())]
    finalize_table(result, [f.id for f in files], prefix)
    progress_json.unlink(missing_ok=True)
    return _write_report(PrecomputeReport(str(prefix), len(files) - len(bad), width, bad, result.rows_computed,
                                          round(time.perf_counter() - t0, 3)))


def merge_precomputed(out_prefix: str | os.PathLike) -> PrecomputeReport:
    """Concatenate finished shards ``PREFIX.shard-I-of-N`` (in order) into ``PREFIX``.

    The result is row for row the table an unsharded run writes, with the same config.
    """
    t0 = time.perf_counter()
    s = os.fspath(out_prefix)
    base = Path(s[:-4] if s.endswith(".npy") else s)
    shard_npys = find_shards(base.name, base.parent, ".npy")
    prefixes = [str(p)[:-4] for p in shard_npys]
    cfgs = [table_config(p) for p in prefixes]
    if any(c is None for c in cfgs):
        raise UserError(f"{base}: a shard has no config.json; re-run its precompute")
    first = asdict(cfgs[0])
    for p, c in zip(prefixes, cfgs):
        d = asdict(c)
        diff = [k for k in d if k not in ("shard", "n_images") and d[k] != first[k]]
        if diff:
            raise UserError(f"{p}: shard made with other settings than shard 0 ({', '.join(diff)})")
    n_images = sum(c.n_images for c in cfgs)
    merged = PrecomputeConfig(**{**first, "shard": "0/1", "n_images": n_images})
    cfg_path = side_path(base, "config.json")
    check_config(cfg_path, merged, KIND)
    ids, rows = concat_tables(prefixes, base)
    save_config(cfg_path, merged, KIND)
    bad = [b for p in prefixes for b in _read_bad(p)]
    width = int(np.load(table_paths(base)[0], mmap_mode="r").shape[1])
    return _write_report(PrecomputeReport(str(base), rows, width, bad, rows, round(time.perf_counter() - t0, 3)))


def _open(prefix):
    from .row_store import open_table

    return open_table(prefix)


def _write_report(rep: PrecomputeReport) -> PrecomputeReport:
    """``PREFIX.report.json``: the run's numbers and the images left out (kept with the table)."""
    from .io import write_json

    write_json(side_path(rep.prefix, "report.json"), rep.to_dict())
    return rep


def _read_bad(prefix) -> list[str]:
    from .io import read_json

    p = side_path(prefix, "report.json")
    return list(read_json(p).get("bad", [])) if p.is_file() else []
