"""Descriptors of an image folder with a trained QK model, in the official per-set HDF5 layout.

Queries are described with the Q model and references (and training images, for score
normalisation) with the K model: the two sides are different models by design.

The work is chunked and resumable like `precompute` (float32 rows in ``OUT.partial.npy``
plus a progress JSON; `row_store`); the HDF5 (`io.write_descriptors`: ``vectors`` float32 +
``image_names``) is written atomically at the end. Unreadable images get no descriptor and
are listed in the report and in ``OUT.bad.json``. `--shard I/N` writes
``OUT.shard-I-of-N.h5``; `merge_descriptors` joins the shards in order.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import check_config, save_config
from .errors import UserError
from .images import list_images
from .io import Descriptors, read_descriptors, read_json, write_descriptors, write_json
from .model_inputs import ChunkReader
from .precompute import side_fingerprint
from .progress import ticker
from .row_store import fill_rows
from .shard import find_shards
from .shard import Shard

KIND = "qk-descriptors"


@dataclass
class DescribeConfig:
    side: str
    images_dir: str
    n_images: int
    shard: str
    model_fingerprint: str  # the side's backbone + PCA, and its head
    dim: int


@dataclass
class DescribeReport:
    out: str
    descriptors: int
    dim: int
    bad: list[str] = field(default_factory=list)
    computed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _shard_path(out: Path, shard: Shard) -> Path:
    return out.with_name(out.stem + shard.suffix() + out.suffix) if not shard.is_whole else out


def _aux(out: Path, what: str) -> Path:
    return out.with_name(f"{out.name}.{what}")


def _head_fingerprint(model, side: str) -> str:
    import hashlib

    h = hashlib.sha256(side_fingerprint(model, side).encode())
    for w in model.head(side).weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def describe(
    model_dir: str | os.PathLike,
    side: str,
    images_dir: str | os.PathLike,
    out_h5: str | os.PathLike,
    batch: int = 32,
    shard: Shard | str | None = None,
    workers: int = 2,
    progress: bool = True,
) -> DescribeReport:
    """Write `side`'s descriptors (float32, n x dim) of every readable image of `images_dir`."""
    from .model import QKModel

    if side not in ("q", "k"):
        raise UserError(f"--side must be q or k, not {side!r}")
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    out = Path(out_h5)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"{out}: the output must be an .h5 file")
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    t0 = time.perf_counter()
    files = shard.select(list_images(images_dir))
    if not files:
        raise UserError(f"{images_dir}: shard {shard.index}/{shard.count} has no images")
    model = QKModel.load(model_dir)
    path = _shard_path(out, shard)
    cfg = DescribeConfig(side, str(Path(images_dir).resolve()), len(files), f"{shard.index}/{shard.count}",
                         _head_fingerprint(model, side), model.cfg.dim)
    cfg_path = _aux(path, "config.json")
    if check_config(cfg_path, cfg, KIND) and path.is_file():
        d = read_descriptors(path)
        return DescribeReport(str(path), len(d.ids), d.dim, _read_bad(path), 0, time.perf_counter() - t0)
    save_config(cfg_path, cfg, KIND)

    import tensorflow as tf

    fn = tf.function(lambda px, g: model.describe(side, px, g), reduce_retracing=True)
    partial, progress_json = _aux(path, "partial.npy"), _aux(path, "progress.json")
    with ChunkReader(files, model.spec.input_size, model.pca, batch, workers) as reader, ticker(progress, len(files), f"describe {side}") as tick:

        def compute(start: int, stop: int):
            b = reader(start, stop)
            return fn(tf.constant(b.pixels), tf.constant(b.gist256)).numpy().astype(np.float32), b.bad

        result = fill_rows(partial, progress_json, len(files), cfg.dim, "float32", compute, batch, tick)
    keep = [i for i in range(len(files)) if i not in result.bad]
    if not keep:
        raise UserError(f"{images_dir}: no image could be read")
    vectors = np.load(partial, mmap_mode="r")
    write_descriptors(path, Descriptors([files[i].id for i in keep], np.asarray(vectors[keep], dtype=np.float32)))
    del vectors
    bad = [f"{files[i].path}: {why}" for i, why in sorted(result.bad.items())]
    partial.unlink(missing_ok=True)
    progress_json.unlink(missing_ok=True)
    return _write_report(DescribeReport(str(path), len(keep), cfg.dim, bad, result.rows_computed,
                                        round(time.perf_counter() - t0, 3)))


def merge_descriptors(out_h5: str | os.PathLike) -> DescribeReport:
    """Join finished shard files ``OUT.shard-I-of-N.h5`` in shard order into ``OUT``."""
    t0 = time.perf_counter()
    out = Path(out_h5)
    shards = find_shards(out.stem, out.parent, out.suffix)
    d = read_descriptors(shards)
    write_descriptors(out, d)
    bad = [b for p in shards for b in _read_bad(p)]
    return _write_report(DescribeReport(str(out), len(d.ids), d.dim, bad, len(d.ids), round(time.perf_counter() - t0, 3)))


def _write_report(rep: DescribeReport) -> DescribeReport:
    """``SET.h5.report.json``: the run's numbers and the images that got no descriptor."""
    write_json(_aux(Path(rep.out), "report.json"), rep.to_dict())
    return rep


def _read_bad(path: Path) -> list[str]:
    p = _aux(path, "report.json")
    return list(read_json(p).get("bad", [])) if p.is_file() else []
