"""Frozen-side feature tables: concat(backbone(image), start256) for every image, float16 on disk.

Why: in QK Iteration one backbone is frozen while the other side trains, so its features
never change during that stage. Computing them once lets every training step push against
ALL T images: only the (cheap) head runs over the table each step. Table row i is exactly
the head input `QKModel.features(side, ...)` of image i, stored as float16 (the paper's
mixed precision; halves memory and disk for a million rows).

Layout: ``PREFIX.npy`` (float16, n x (feature_dim + dim), memory-mappable), ``PREFIX.ids.txt``
and the stage sidecars ``PREFIX.config.json`` (side, backbone, the model's fingerprint, the
images' fingerprint...) and ``PREFIX.report.json``. Work is chunked and resumable
(`stages.rows`); ``--shard I/N`` writes ``PREFIX.shard-I-of-N.*`` and `merge_precomputed`
concatenates the shards into the table an unsharded run would write.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from ..configs import from_dict
from ..formats.feature_table import concat_tables, feature_table_paths, open_feature_table
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input
from ..stages.merge import merge_shards
from ..stages.resources import check_workers, pixels_per_batch
from ..stages.rows import write_table
from ..stages.runner import fill_from_images, select_images
from ..stages.shards import Shard, shard_name
from ..ui import ticker
from .forward import SideJob, check_side_options, head_inputs
from .inputs import InputPlan

KIND = "qk-feature-table"
TABLE_DTYPE = "float16"


@dataclass
class PrecomputeConfig:
    """Everything the table's content depends on (batch size and workers do not matter)."""

    side: str
    n_images: int
    shard: str
    backbone: str
    input_size: int
    feature_dim: int
    dim: int
    model_fingerprint: str  # this side's backbone (weights, or the ONNX file) + the start descriptor and PCA
    dtype: str = TABLE_DTYPE
    images_dir: str = ""  # where the images were (for `default_manifest`); not compared


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


def table_artifact(prefix: str | os.PathLike) -> Artifact:
    return Artifact(prefix, KIND, layout="prefix", stage="precompute")


def table_input(name: str, prefix: str | os.PathLike) -> Input:
    """A feature table as a stage input: its .npy, ids and record, fingerprinted together
    (training from it, the cached other side built over it)."""
    npy, ids = feature_table_paths(prefix)
    rec = table_artifact(prefix).record_path
    return Input(name, npy, fingerprint.of_files([f for f in (npy, ids, rec) if f.is_file()]))


def table_config(prefix: str | os.PathLike) -> PrecomputeConfig | None:
    """The settings saved next to a table, or None if it has none (made by another tool)."""
    art = table_artifact(prefix)
    rec = art.record()
    return from_dict(PrecomputeConfig, rec["config"], str(art.record_path)) if rec and rec.get("kind") == KIND else None


def frozen_table(model, side: str, images: Path, cache: Path) -> Path:
    """Where a frozen backbone's table of an image folder lives: named by the backbone's
    fingerprint, so every phase (and model) with that backbone and start shares it."""
    return Path(cache) / f"frozen-{model.backbone_fingerprint(side)}.{side}.{Path(images).name}"


def phase_table(model_dir: str | os.PathLike, side: str, images: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Where a phase keeps `side`'s table of an image folder (`pipeline`, `api.run_phase`): a
    frozen backbone's by its fingerprint (`frozen_table`: one table for every phase and model
    with that backbone), a trainable one's by the model folder's name."""
    from ..models.qk_model import QKModel, frozen_backbone, read_config

    # the model itself is loaded only for a frozen backbone's fingerprint
    if frozen_backbone(read_config(model_dir)):
        return frozen_table(QKModel.load(model_dir), side, Path(images), Path(folder))
    return Path(folder) / f"{Path(model_dir).name}.{side}.{Path(images).name}"


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
    overwrite a table made with other settings or inputs (another model, side or folder).
    """
    from ..models.qk_model import QKModel

    check_side_options(side, batch)
    shard = Shard.parse(shard)
    t0 = time.perf_counter()
    images, files = select_images(images_dir, shard)
    check_workers(workers)
    art = table_artifact(out_prefix).sharded(shard)
    model = QKModel.load(model_dir)
    pixels_per_batch(batch, model.spec.input_size or 0)
    cfg = PrecomputeConfig(
        side=side,
        n_images=len(files),
        shard=str(shard),
        backbone=model.cfg.backbone,
        input_size=model.spec.input_size or 0,
        feature_dim=model.spec.dim,
        dim=model.cfg.dim,
        model_fingerprint=model.backbone_fingerprint(side),
        images_dir=str(Path(images_dir).resolve()),
    )
    inputs = [Input.of_images("--images", images_dir, images)]
    npy, ids_txt = feature_table_paths(art.path)
    with art.open(cfg, inputs, check={"--model": model_dir}, ignore=("images_dir",), writes=[ids_txt]) as state:
        if state.done:
            ids, x = open_feature_table(art.path)
            return PrecomputeReport(str(art.path), len(ids), x.shape[1], state.report.get("bad", []), 0,
                                    round(time.perf_counter() - t0, 3))
        width = cfg.feature_dim + cfg.dim
        job = SideJob(InputPlan.for_side(model.side(side)), head_inputs(model, side, batch), width, TABLE_DTYPE, batch)
        with ticker(progress, len(files), f"precompute {side}") as tick:
            filled = fill_from_images(art, files, job, batch, workers, tick)
        bad = filled.bad_list([f.path for f in files])
        write_table(filled, [f.id for f in files], art.path, str(images_dir))
        rep = PrecomputeReport(str(art.path), len(files) - len(bad), width, bad, filled.rows_computed,
                               round(time.perf_counter() - t0, 3))
        art.finish(rep.to_dict())
    return rep


def merge_precomputed(out_prefix: str | os.PathLike) -> PrecomputeReport:
    """Concatenate finished shards ``PREFIX.shard-I-of-N`` (in order) into ``PREFIX``.

    The result is row for row the table an unsharded run writes, with the same record.
    """
    t0 = time.perf_counter()
    art = table_artifact(out_prefix)

    def report(reports: list[dict]) -> dict:
        return {"rows": sum(r.get("rows", 0) for r in reports), "bad": [b for r in reports for b in r.get("bad", [])]}

    merge_shards(art, lambda shard, rec: [shard_name(art.path, shard, keep_suffix=False)], concat_tables, report,
                 marker=".npy", writes=[feature_table_paths(art.path)[1]])
    ids, x = open_feature_table(art.path)
    rep = PrecomputeReport(str(art.path), len(ids), x.shape[1], art.report().get("bad", []), len(ids),
                           round(time.perf_counter() - t0, 3))
    return rep
