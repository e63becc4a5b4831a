"""The `gist-pca` stage: fit the GIST PCA on training images, then describe image sets.

Two steps, because the PCA must be fitted on TRAINING images only (a reference's descriptor may
not depend on the other references) and is then reused for every set:

1. `fit_gist_pca(train_dir, out_dir)`: a seeded sample of training images -> GIST 960
   (L2-normalised) -> PCA 960->256, no whitening -> ``OUT_DIR/pca.npz`` (+ ``pca.json``).
2. `describe_gist_set(pca, images_dir, out_h5)`: per-set HDF5 files in the official layout,
   ``SET.h5`` (256-d PCA output) and ``SET.gist960.h5`` (the normalised 960-d GIST). The
   960-d rows are filled in resumable chunks (`stages.rows`); ``--shard I/N`` describes one
   slice and `merge_gist_shards` joins them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..configs import GistPCAConfig
from ..errors import UserError
from ..formats.descriptors import Descriptors, read_descriptors, write_descriptors
from ..formats.ids import image_id
from ..formats.images import list_images
from ..formats.pca import PCAModel
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input
from ..stages.rows import fill_rows, read_good_rows
from ..stages.shards import Shard, shard_name
from ..ui import progress_bar, ticker, warn_skipped
from ..vectors import fit_pca
from .descriptor import GIST_DIM
from .files import describe_gist_files

FIT_KIND = "GIST PCA"
SET_KIND = "GIST descriptors"


@dataclass
class GistSetReport:
    n_described: int
    failures: list[str] = field(default_factory=list)  # "path: reason"
    out_256: Path | None = None
    out_960: Path | None = None
    skipped: bool = False


def pca_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "pca.npz"


def gist960_path(out_h5: str | os.PathLike) -> Path:
    p = Path(out_h5)
    return p.with_name(p.name[: -len(".h5")] + ".gist960.h5" if p.name.endswith(".h5") else p.name + ".gist960.h5")


def resolve_pca_file(path: str | os.PathLike) -> Path:
    """A pca.npz, or the folder `fit_gist_pca` wrote it into."""
    path = Path(path)
    return pca_path(path) if path.is_dir() else path


def load_pca(path: str | os.PathLike) -> PCAModel:
    path = resolve_pca_file(path)
    if not path.is_file():
        raise UserError(f"{path}: GIST PCA not found (run `isc-qk gist-pca --train DIR --out DIR` first)")
    return PCAModel.load(path)


# --------------------------------------------------------------------------- 1. fit
def fit_gist_pca(train_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: GistPCAConfig | None = None,
                 workers: int = 1) -> Path:
    """Fit the GIST PCA on a seeded sample of training images; skip if already fitted alike."""
    cfg = cfg or GistPCAConfig()
    cfg.validate()
    files = list_images(train_dir)
    art = Artifact(out_dir, FIT_KIND, layout="folder", stage="gist_pca")
    inputs = [Input("--train", Path(train_dir), fingerprint.of_image_list(files))]
    with art.open(cfg, inputs) as state:
        if state.done and pca_path(out_dir).is_file():
            return pca_path(out_dir)
        rng = np.random.default_rng(cfg.seed)
        if cfg.n_train is not None and cfg.n_train < len(files):
            files = [files[i] for i in sorted(rng.choice(len(files), cfg.n_train, replace=False))]
        if len(files) < cfg.dim:
            raise UserError(f"{train_dir}: {len(files)} training images, need at least {cfg.dim} to fit a {cfg.dim}-d PCA")
        with progress_bar(transient=True) as bar:
            bar.add_task(f"GIST of {len(files)} training images", total=None)
            res = describe_gist_files([f.path for f in files], workers=workers)
        warn_skipped([f"{p}: {why}" for p, why in res.failures])
        if len(res.ids) < cfg.dim:
            raise UserError(f"{train_dir}: only {len(res.ids)} readable training images, need {cfg.dim}")
        fit_pca(res.gist960, dim=cfg.dim, seed=cfg.seed, train_ids=res.ids).save(pca_path(out_dir))
        art.finish({"n_train": len(res.ids), "failures": [f"{p}: {why}" for p, why in res.failures]})
    return pca_path(out_dir)


# --------------------------------------------------------------------------- 2. describe
@dataclass
class GistSetRecord:
    """What a GIST descriptor file depends on besides its inputs."""

    dim: int
    shard: str
    n_images: int


def describe_gist_set(
    pca: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_h5: str | os.PathLike,
    workers: int = 1,
    shard: Shard | str | None = None,
    chunk: int = 2048,
    progress: bool = True,
) -> GistSetReport:
    """Write GIST-PCA256 and GIST-960 descriptors of every image of a folder (or one shard)."""
    shard = Shard.parse(shard)
    pca_file = resolve_pca_file(pca)
    model = load_pca(pca_file)
    out_h5 = Path(out_h5)
    if not out_h5.name.endswith(".h5"):
        raise UserError(f"{out_h5}: the output must be an .h5 file")
    art = Artifact(out_h5, SET_KIND).sharded(shard)
    out960 = shard_name(gist960_path(out_h5), shard)
    images = list_images(images_dir)
    files = shard.select(images)
    if not files:
        raise UserError(f"{images_dir}: shard {shard} has no images")
    inputs = [Input("--pca", pca_file, fingerprint.of_file(pca_file)),
              Input("--images", Path(images_dir), fingerprint.of_image_list(images))]
    record = GistSetRecord(dim=model.dim, shard=str(shard), n_images=len(files))
    with art.open(record, inputs, check={"--out (960-d)": out960}) as state:
        if state.done and out960.is_file():
            return GistSetReport(int(state.report.get("n_described", 0)), state.report.get("failures", []),
                                 art.path, out960, skipped=True)

        def compute(start: int, stop: int):
            res = describe_gist_files([f.path for f in files[start:stop]], workers=workers, batch=256)
            rows = np.zeros((stop - start, GIST_DIM), np.float32)
            row_of = {f.id: i for i, f in enumerate(files[start:stop])}
            for i, g in zip(res.ids, res.gist960):
                rows[row_of[i]] = g
            bad = {start + row_of[image_id(p)]: why for p, why in res.failures}
            return rows, bad

        with ticker(progress, len(files), f"GIST {Path(images_dir).name}") as tick:
            filled = fill_rows(art, len(files), GIST_DIM, "float32", compute, chunk, tick)
        failures = filled.bad_list([f.path for f in files])
        warn_skipped(failures)
        g960 = read_good_rows(filled, [f.id for f in files], str(images_dir))
        write_descriptors(out960, g960)
        write_descriptors(art.path, Descriptors(g960.ids, model.transform(g960.vectors)))
        art.finish({"n_described": len(g960.ids), "failures": failures})
    return GistSetReport(len(g960.ids), failures, art.path, out960)


def merge_gist_shards(out_h5: str | os.PathLike) -> tuple[Path, Path]:
    """Join the shards of both outputs (SET.h5 and SET.gist960.h5) of `describe_gist_set`."""
    art = Artifact(out_h5, SET_KIND)
    shards = art.shards()
    config, inputs = art.merged_record(shards)
    out960 = gist960_path(out_h5)
    with art.lock():
        for target, parts in ((out960, [gist960_path_of_shard(s.path) for s in shards]),
                              (art.path, [s.path for s in shards])):
            write_descriptors(target, read_descriptors(parts))
        art.write_merged_record(config, inputs)
        reports = [s.report() for s in shards]
        art.finish({"n_described": sum(r.get("n_described", 0) for r in reports),
                    "failures": [f for r in reports for f in r.get("failures", [])], "merged_shards": len(shards)})
    return art.path, out960


def gist960_path_of_shard(shard_h5: Path) -> Path:
    """``SET.shard-I-of-N.h5`` -> ``SET.gist960.shard-I-of-N.h5`` (as `describe_gist_set` names it)."""
    name = shard_h5.name
    i = name.index(".shard-")
    return shard_h5.with_name(name[:i] + ".gist960" + name[i:])
