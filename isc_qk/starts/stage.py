"""The `descriptor-pca` stage (`gist-pca` for GIST): fit a frozen encoder's PCA on training
images, then describe image sets with it.

Two steps, because the PCA must be fitted on TRAINING images only (a reference's descriptor may
not depend on the other references) and is then reused for every set:

1. `fit_start_pca(name, train_dir, out_dir)`: a seeded sample of training images -> raw
   vectors (L2-normalised GIST 960, SSCD 512...) -> PCA to 256 (whitened with
   ``PCAFitConfig.whiten``) -> ``OUT_DIR/pca.npz`` (+ ``pca.json``, which names the encoder).
2. `describe_start_set(pca, images_dir, out_h5)`: per-set HDF5 files in the official layout,
   ``SET.h5`` (the start descriptor: PCA-256, then L2 for embeddings) and the raw vectors
   ``SET.gist960.h5`` / ``SET.sscd512.h5``. Both steps run through the per-image runner
   (`stages.runner`: resumable, one error policy); ``--shard I/N`` describes one slice and
   `merge_start_shards` joins them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..configs import PCAFitConfig
from ..encoders import Encoder, create
from ..errors import UserError
from ..formats.descriptors import Descriptors, read_descriptors, write_descriptors
from ..formats.pca import config_path
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input
from ..stages.merge import merge_shards
from ..stages.resources import check_workers
from ..stages.rows import read_good_rows
from ..stages.runner import DecodedChunk, fill_from_images, select_images
from ..stages.shards import Shard, shard_name
from ..ui import ticker, warn_skipped
from ..vectors import fit_pca
from .start import GIST, Start, raw_path

FIT_KIND = "descriptor PCA"
SET_KIND = "frozen descriptors"
CHUNK = 256  # images per chunk (and per resume step)


@dataclass
class SetReport:
    n_described: int
    failures: list[str] = field(default_factory=list)  # "path: reason"
    out_256: Path | None = None
    out_raw: Path | None = None
    skipped: bool = False


@dataclass
class RawJob:
    """The runner job of a frozen encoder: one raw vector per image."""

    encoder: Encoder
    dtype: str = "float32"

    @property
    def width(self) -> int:
        return self.encoder.spec.dim

    @property
    def decoders(self) -> list:
        return [self.encoder.decode]

    @property
    def processes(self) -> bool:
        return self.encoder.decode_in_processes

    def prepare(self, chunk: DecodedChunk) -> tuple[DecodedChunk, np.ndarray]:
        return chunk, self.encoder.encode(chunk.column(0))

    def rows(self, prepared: tuple[DecodedChunk, np.ndarray]) -> tuple[np.ndarray, dict[int, str]]:
        chunk, raw = prepared
        out = np.zeros((chunk.n, self.width), np.float32)
        out[chunk.ok] = raw
        return out, chunk.bad


def pca_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "pca.npz"


def resolve_pca_file(path: str | os.PathLike) -> Path:
    """A pca.npz, or the folder `fit_start_pca` wrote it into."""
    path = Path(path)
    return pca_path(path) if path.is_dir() else path


def load_start(path: str | os.PathLike) -> Start:
    """The start of a fitted PCA file (or its folder)."""
    path = resolve_pca_file(path)
    if not path.is_file():
        raise UserError(f"{path}: PCA not found (run `isc-qk gist-pca` / `isc-qk descriptor-pca --train DIR --out DIR` first)")
    return Start.load(path)


# --------------------------------------------------------------------------- 1. fit
def fit_start_pca(name: str, train_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  cfg: PCAFitConfig | None = None, workers: int = 1, progress: bool = True) -> Path:
    """Fit encoder `name`'s PCA on a seeded sample of training images; skip if already fitted alike."""
    cfg = cfg or PCAFitConfig()
    cfg.validate()
    check_workers(workers)
    encoder = create(name, trainable=False)
    if encoder.spec.trainable:
        raise UserError(f"{name} is a trainable backbone, not a frozen descriptor")
    images, _ = select_images(train_dir, Shard(0, 1))
    gist = encoder.id == GIST
    art = Artifact(out_dir, FIT_KIND, layout="folder", stage="gist_pca" if gist else "descriptor_pca")
    inputs = [Input.of_images("--train", train_dir, images)]
    record = cfg if gist else {"descriptor": encoder.id, "model": encoder.fingerprint(), **dataclasses.asdict(cfg)}
    written = [pca_path(out_dir), config_path(pca_path(out_dir))]
    with art.open(record, inputs, writes=written) as state:
        if state.done and pca_path(out_dir).is_file():
            return pca_path(out_dir)
        files = images
        if cfg.n_train is not None and cfg.n_train < len(files):
            rng = np.random.default_rng(cfg.seed)
            files = [files[i] for i in sorted(rng.choice(len(files), cfg.n_train, replace=False))]
        if len(files) < cfg.dim:
            raise UserError(f"{train_dir}: {len(files)} training images, need at least {cfg.dim} to fit a {cfg.dim}-d PCA")
        with ticker(progress, len(files), f"{encoder.id} of {len(files)} training images") as tick:
            filled = fill_from_images(art, files, RawJob(encoder), CHUNK, workers, tick)
        failures = filled.bad_list([f.path for f in files])
        warn_skipped(failures)
        if len(filled.good) < cfg.dim:
            raise UserError(f"{train_dir}: only {len(filled.good)} readable training images, need {cfg.dim}")
        raw = read_good_rows(filled, [f.id for f in files], str(train_dir))
        pca = fit_pca(raw.vectors, dim=min(cfg.dim, encoder.spec.dim), seed=cfg.seed, train_ids=raw.ids,
                      whiten=cfg.whiten)
        if not gist:
            pca.config.update(descriptor=encoder.id, l2_after=True)
        pca.save(pca_path(out_dir))
        art.finish({"n_train": len(raw.ids), "failures": failures})
    return pca_path(out_dir)


# --------------------------------------------------------------------------- 2. describe
@dataclass
class SetRecord:
    """What a descriptor file depends on besides its inputs."""

    dim: int
    shard: str
    n_images: int


def set_artifact(out_h5: str | os.PathLike) -> Artifact:
    return Artifact(out_h5, SET_KIND)


def describe_start_set(
    pca: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_h5: str | os.PathLike,
    workers: int = 1,
    shard: Shard | str | None = None,
    chunk: int = CHUNK,
    progress: bool = True,
) -> SetReport:
    """Write the start descriptor (PCA-256) and the raw vectors of every image of a folder."""
    shard = Shard.parse(shard)
    check_workers(workers)
    pca_file = resolve_pca_file(pca)
    start = load_start(pca_file)
    out_h5 = Path(out_h5)
    if not out_h5.name.endswith(".h5"):
        raise UserError(f"{out_h5}: the output must be an .h5 file")
    art = set_artifact(out_h5).sharded(shard)
    out_raw = shard_name(raw_path(out_h5, start.encoder), shard)
    images, files = select_images(images_dir, shard)
    inputs = [Input("--pca", pca_file, fingerprint.of_file(pca_file)),
              Input.of_images("--images", images_dir, images)]
    record = SetRecord(dim=start.dim, shard=str(shard), n_images=len(files))
    with art.open(record, inputs, writes=[out_raw]) as state:
        if state.done and out_raw.is_file():
            return SetReport(int(state.report.get("n_described", 0)), state.report.get("failures", []),
                             art.path, out_raw, skipped=True)
        with ticker(progress, len(files), f"{start.name} {Path(images_dir).name}") as tick:
            filled = fill_from_images(art, files, RawJob(start.encoder), chunk, workers, tick)
        failures = filled.bad_list([f.path for f in files])
        warn_skipped(failures)
        raw = read_good_rows(filled, [f.id for f in files], str(images_dir))
        write_descriptors(out_raw, raw)
        write_descriptors(art.path, Descriptors(raw.ids, start.vectors(raw.vectors)))
        art.finish({"n_described": len(raw.ids), "failures": failures})
    return SetReport(len(raw.ids), failures, art.path, out_raw)


def merge_start_shards(out_h5: str | os.PathLike) -> tuple[Path, Path]:
    """Join the shards of both outputs (SET.h5 and its raw file) of `describe_start_set`."""
    art = set_artifact(out_h5)

    def outputs(shard: Shard, record: dict) -> list[Path]:
        encoder = load_start(record["inputs"]["--pca"]["path"]).encoder
        return [shard_name(raw_path(out_h5, encoder), shard), shard_name(Path(out_h5), shard)]

    def join(parts: list[Path], target: Path) -> None:
        write_descriptors(target, read_descriptors(parts))

    def report(reports: list[dict]) -> dict:
        return {"n_described": sum(r.get("n_described", 0) for r in reports),
                "failures": [f for r in reports for f in r.get("failures", [])]}

    targets = merge_shards(art, outputs, join, report)
    return targets[1], targets[0]
