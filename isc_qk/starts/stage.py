"""The `descriptor-pca` stage (`gist-pca` for GIST): fit a frozen descriptor's PCA on training
images, then describe image sets with it.

Two steps, because the PCA must be fitted on TRAINING images only (a reference's descriptor may
not depend on the other references) and is then reused for every set:

1. `fit_start_pca(descriptor, train_dir, out_dir)`: a seeded sample of training images -> raw
   vectors (L2-normalised GIST 960, SSCD 512...) -> PCA to 256, no whitening ->
   ``OUT_DIR/pca.npz`` (+ ``pca.json``, which names the descriptor).
2. `describe_start_set(pca, images_dir, out_h5)`: per-set HDF5 files in the official layout,
   ``SET.h5`` (the start descriptor: PCA-256, then L2 for embeddings) and the raw vectors
   ``SET.gist960.h5`` / ``SET.sscd512.h5``. The raw rows are filled in resumable chunks
   (`stages.rows`); ``--shard I/N`` describes one slice and `merge_start_shards` joins them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..configs import PCAFitConfig
from ..errors import UserError
from ..formats.descriptors import Descriptors, read_descriptors, write_descriptors
from ..formats.ids import image_id
from ..formats.images import list_images
from ..formats.pca import PCAModel, config_path
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input
from ..stages.resources import check_workers
from ..stages.rows import fill_rows, read_good_rows
from ..stages.shards import Shard, shard_name
from ..ui import progress_bar, ticker, warn_skipped
from ..vectors import fit_pca
from .registry import GIST, StartDescriptor

FIT_KIND = "descriptor PCA"
SET_KIND = "frozen descriptors"


@dataclass
class SetReport:
    n_described: int
    failures: list[str] = field(default_factory=list)  # "path: reason"
    out_256: Path | None = None
    out_raw: Path | None = None
    skipped: bool = False

    @property
    def out_960(self) -> Path | None:  # the GIST name of the raw output
        return self.out_raw


def pca_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "pca.npz"


def raw_path(out_h5: str | os.PathLike, descriptor: StartDescriptor) -> Path:
    """``SET.h5`` -> ``SET.gist960.h5`` (``SET.sscd512.h5`` ...): the raw vectors beside it."""
    p = Path(out_h5)
    tag = f".{descriptor.raw_suffix}.h5"
    return p.with_name(p.name[: -len(".h5")] + tag if p.name.endswith(".h5") else p.name + tag)


def gist960_path(out_h5: str | os.PathLike) -> Path:
    return raw_path(out_h5, StartDescriptor(GIST))


def resolve_pca_file(path: str | os.PathLike) -> Path:
    """A pca.npz, or the folder `fit_start_pca` wrote it into."""
    path = Path(path)
    return pca_path(path) if path.is_dir() else path


def load_pca(path: str | os.PathLike) -> tuple[PCAModel, StartDescriptor]:
    """A fitted PCA and the descriptor it was fitted on (older GIST PCAs name none: GIST)."""
    path = resolve_pca_file(path)
    if not path.is_file():
        raise UserError(f"{path}: PCA not found (run `isc-qk gist-pca` / `isc-qk descriptor-pca --train DIR --out DIR` first)")
    pca = PCAModel.load(path)
    return pca, StartDescriptor(pca.config.get("descriptor", GIST))


# --------------------------------------------------------------------------- 1. fit
def fit_start_pca(descriptor: str, train_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  cfg: PCAFitConfig | None = None, workers: int = 1) -> Path:
    """Fit `descriptor`'s PCA on a seeded sample of training images; skip if already fitted alike."""
    cfg = cfg or PCAFitConfig()
    cfg.validate()
    check_workers(workers)
    desc = StartDescriptor(descriptor)
    files = list_images(train_dir)
    art = Artifact(out_dir, FIT_KIND, layout="folder", stage="gist_pca" if desc.is_gist else "descriptor_pca")
    inputs = [Input.of_images("--train", train_dir, files)]
    record = cfg if desc.is_gist else {"descriptor": descriptor, "model": desc.fingerprint(), **dataclasses.asdict(cfg)}
    written = [pca_path(out_dir), config_path(pca_path(out_dir))]
    with art.open(record, inputs, writes=written) as state:
        if state.done and pca_path(out_dir).is_file():
            return pca_path(out_dir)
        rng = np.random.default_rng(cfg.seed)
        if cfg.n_train is not None and cfg.n_train < len(files):
            files = [files[i] for i in sorted(rng.choice(len(files), cfg.n_train, replace=False))]
        if len(files) < cfg.dim:
            raise UserError(f"{train_dir}: {len(files)} training images, need at least {cfg.dim} to fit a {cfg.dim}-d PCA")
        with progress_bar(transient=True) as bar:
            bar.add_task(f"{descriptor} of {len(files)} training images", total=None)
            res = desc.from_files([f.path for f in files], workers=workers)
        failures = [f"{p}: {why}" for p, why in res.failures]
        warn_skipped(failures)
        if len(res.ids) < cfg.dim:
            raise UserError(f"{train_dir}: only {len(res.ids)} readable training images, need {cfg.dim}")
        pca = fit_pca(res.raw, dim=min(cfg.dim, desc.raw_dim), seed=cfg.seed, train_ids=res.ids, whiten=cfg.whiten)
        if not desc.is_gist:
            pca.config.update(descriptor=descriptor, l2_after=True)
        pca.save(pca_path(out_dir))
        art.finish({"n_train": len(res.ids), "failures": failures})
    return pca_path(out_dir)


# --------------------------------------------------------------------------- 2. describe
@dataclass
class SetRecord:
    """What a descriptor file depends on besides its inputs."""

    dim: int
    shard: str
    n_images: int


def describe_start_set(
    pca: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_h5: str | os.PathLike,
    workers: int = 1,
    shard: Shard | str | None = None,
    chunk: int = 2048,
    progress: bool = True,
) -> SetReport:
    """Write the start descriptor (PCA-256) and the raw vectors of every image of a folder."""
    shard = Shard.parse(shard)
    check_workers(workers)
    pca_file = resolve_pca_file(pca)
    model, desc = load_pca(pca_file)
    out_h5 = Path(out_h5)
    if not out_h5.name.endswith(".h5"):
        raise UserError(f"{out_h5}: the output must be an .h5 file")
    art = Artifact(out_h5, SET_KIND).sharded(shard)
    out_raw = shard_name(raw_path(out_h5, desc), shard)
    images = list_images(images_dir)
    files = shard.select(images)
    if not files:
        raise UserError(f"{images_dir}: shard {shard} has no images")
    inputs = [Input("--pca", pca_file, fingerprint.of_file(pca_file)),
              Input.of_images("--images", images_dir, images)]
    record = SetRecord(dim=model.dim, shard=str(shard), n_images=len(files))
    with art.open(record, inputs, writes=[out_raw]) as state:
        if state.done and out_raw.is_file():
            return SetReport(int(state.report.get("n_described", 0)), state.report.get("failures", []),
                             art.path, out_raw, skipped=True)

        def compute(start: int, stop: int):
            part = files[start:stop]
            res = desc.from_files([f.path for f in part], workers=workers)
            rows = np.zeros((stop - start, desc.raw_dim), np.float32)
            row_of = {f.id: i for i, f in enumerate(part)}
            for i, g in zip(res.ids, res.raw):
                rows[row_of[i]] = g
            return rows, {start + row_of[image_id(p)]: why for p, why in res.failures}

        with ticker(progress, len(files), f"{desc.name} {Path(images_dir).name}") as tick:
            filled = fill_rows(art, len(files), desc.raw_dim, "float32", compute, chunk, tick)
        failures = filled.bad_list([f.path for f in files])
        warn_skipped(failures)
        raw = read_good_rows(filled, [f.id for f in files], str(images_dir))
        write_descriptors(out_raw, raw)
        write_descriptors(art.path, Descriptors(raw.ids, desc.start(model, raw.vectors)))
        art.finish({"n_described": len(raw.ids), "failures": failures})
    return SetReport(len(raw.ids), failures, art.path, out_raw)


def merge_start_shards(out_h5: str | os.PathLike) -> tuple[Path, Path]:
    """Join the shards of both outputs (SET.h5 and its raw file) of `describe_start_set`."""
    art = Artifact(out_h5, SET_KIND)
    shards = art.shards()
    config, inputs = art.merged_record(shards)
    _, desc = load_pca(inputs["--pca"]["path"])
    out_raw = raw_path(out_h5, desc)
    with art.merging(writes=[out_raw]):
        art.write_merged_record(config, inputs)
        for target, parts in ((out_raw, [_shard_raw(s.path, desc) for s in shards]), (art.path, [s.path for s in shards])):
            write_descriptors(target, read_descriptors(parts))
        reports = [s.report() for s in shards]
        art.finish({"n_described": sum(r.get("n_described", 0) for r in reports),
                    "failures": [f for r in reports for f in r.get("failures", [])], "merged_shards": len(shards)})
    return art.path, out_raw


def _shard_raw(shard_h5: Path, desc: StartDescriptor) -> Path:
    """``SET.shard-I-of-N.h5`` -> ``SET.gist960.shard-I-of-N.h5`` (as `describe_start_set` names it)."""
    name = shard_h5.name
    i = name.index(".shard-")
    return shard_h5.with_name(f"{name[:i]}.{desc.raw_suffix}{name[i:]}")


# --------------------------------------------------------------------------- GIST names
def fit_gist_pca(train_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: PCAFitConfig | None = None,
                 workers: int = 1) -> Path:
    """The GIST-PCA256 fit (the ISC2021 baseline and the paper's residual start)."""
    return fit_start_pca(GIST, train_dir, out_dir, cfg, workers)


describe_gist_set = describe_start_set
merge_gist_shards = merge_start_shards
