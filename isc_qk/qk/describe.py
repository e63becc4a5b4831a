"""Descriptors of an image folder with a trained QK model, in the official per-set HDF5 layout.

Queries are described with the Q model and references (and training images, for score
normalisation) with the K model: the two sides are different models by design.

The work is chunked and resumable like `precompute` (float32 rows in the artifact's
``partial.npy``; `stages.rows`); the HDF5 (``vectors`` float32 + ``image_names``) is written
atomically at the end. Unreadable images get no descriptor and are listed in the report
(``OUT.report.json``). ``--shard I/N`` writes ``OUT.shard-I-of-N.h5``; `merge_descriptors`
joins the shards in order.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats.descriptors import read_descriptors, write_descriptors
from ..stages.artifact import Artifact, Input
from ..stages.merge import merge_shards
from ..stages.resources import check_workers, pixels_per_batch
from ..stages.rows import write_descriptor_rows
from ..stages.runner import fill_from_images, select_images
from ..stages.shards import Shard, shard_name
from ..ui import ticker
from .forward import SideJob, check_side_options, descriptors
from .inputs import InputPlan, run_padded

KIND = "qk-descriptors"


@dataclass
class DescribeConfig:
    side: str
    n_images: int
    shard: str
    model_fingerprint: str  # the side's backbone + start PCA, and its head
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


def descriptors_artifact(out_h5: str | os.PathLike) -> Artifact:
    return Artifact(out_h5, KIND, layout="file", stage="describe")


def describe(
    model_dir: str | os.PathLike,
    side: str,
    images_dir: str | os.PathLike,
    out_h5: str | os.PathLike,
    batch: int = 32,
    shard: Shard | str | None = None,
    workers: int = 2,
    progress: bool = True,
    feature_cache: str | os.PathLike | None = None,
) -> DescribeReport:
    """Write `side`'s descriptors (float32, n x dim) of every readable image of `images_dir`.

    `feature_cache`: for a frozen backbone, a folder of its feature tables
    (`qk.precompute.frozen_table`): the table of this folder is made there once (or found) and only
    the head runs, so every phase of a pipeline describes a set for the cost of its head.
    """
    from ..models.qk_model import QKModel

    check_side_options(side, batch)
    out = Path(out_h5)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"{out}: the output must be an .h5 file")
    shard = Shard.parse(shard)
    t0 = time.perf_counter()
    images, files = select_images(images_dir, shard)
    check_workers(workers)
    art = descriptors_artifact(out).sharded(shard)
    model = QKModel.load(model_dir)
    pixels_per_batch(batch, model.spec.input_size or 0)
    cfg = DescribeConfig(side, len(files), str(shard), model.side_fingerprint(side), model.cfg.dim)
    inputs = [Input.of_images("--images", images_dir, images)]
    with art.open(cfg, inputs, check={"--model": model_dir}) as state:
        if state.done:
            d = read_descriptors(art.path)
            return DescribeReport(str(art.path), len(d.ids), d.dim, state.report.get("bad", []), 0,
                                  round(time.perf_counter() - t0, 3))
        if model.frozen and feature_cache is not None and shard.is_whole:
            rep = _from_table(model, model_dir, side, images_dir, Path(feature_cache), art, workers, progress, t0)
            art.finish(rep.to_dict())
            return rep
        job = SideJob(InputPlan.for_side(model.side(side)), descriptors(model, side, batch), cfg.dim, "float32", batch)
        with ticker(progress, len(files), f"describe {side}") as tick:
            filled = fill_from_images(art, files, job, batch, workers, tick)
        desc = write_descriptor_rows(filled, [f.id for f in files], art.path, str(images_dir))
        rep = DescribeReport(str(art.path), len(desc.ids), cfg.dim, filled.bad_list([f.path for f in files]),
                             filled.rows_computed, round(time.perf_counter() - t0, 3))
        art.finish(rep.to_dict())
    return rep


def _from_table(model, model_dir, side: str, images_dir, cache: Path, art, workers: int, progress: bool,
                t0: float) -> DescribeReport:
    """Descriptors = the head over the frozen backbone's cached table of `images_dir`."""
    import tensorflow as tf

    from ..formats.descriptors import Descriptors
    from ..formats.feature_table import open_feature_table
    from .precompute import frozen_table, precompute

    prefix = frozen_table(model, side, Path(images_dir), cache)
    table_rep = precompute(model_dir, side, images_dir, prefix, workers=workers, progress=progress)
    ids, table = open_feature_table(prefix)
    head = tf.function(lambda x: model.head(side)(x, training=False), reduce_retracing=True)
    chunk = 4096
    vectors = np.concatenate([run_padded(head, chunk, np.asarray(table[s:s + chunk], np.float32))
                              for s in range(0, len(ids), chunk)])
    write_descriptors(art.path, Descriptors(ids, vectors))
    return DescribeReport(str(art.path), len(ids), model.cfg.dim, table_rep.bad, len(ids), round(time.perf_counter() - t0, 3))


def merge_descriptors(out_h5: str | os.PathLike) -> DescribeReport:
    """Join finished shard files ``OUT.shard-I-of-N.h5`` in shard order into ``OUT``."""
    t0 = time.perf_counter()
    art = descriptors_artifact(out_h5)

    def join(parts: list[Path], target: Path) -> None:
        write_descriptors(target, read_descriptors(parts))

    def report(reports: list[dict]) -> dict:
        return {"bad": [b for r in reports for b in r.get("bad", [])]}

    merge_shards(art, lambda shard, rec: [shard_name(art.path, shard)], join, report)
    d = read_descriptors(art.path)
    rep = DescribeReport(str(art.path), len(d.ids), d.dim, art.report().get("bad", []), len(d.ids),
                         round(time.perf_counter() - t0, 3))
    return rep
