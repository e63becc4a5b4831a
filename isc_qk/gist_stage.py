"""The `gist-pca` stage: fit the GIST PCA on training images, then describe image sets.

Two steps, because the PCA must be fitted on TRAINING images only (a reference's descriptor may
not depend on the other references) and is then reused for every set:

1. `fit_gist_pca(train_dir, out_dir)`: a seeded sample of training images -> GIST 960
   (L2-normalised) -> PCA 960->256, no whitening -> ``OUT_DIR/pca.npz`` (+ ``pca.json``).
2. `describe_gist_set(pca, images_dir, out_h5)`: per-set HDF5 files in the official layout,
   ``SET.h5`` (256-d PCA output) and ``SET.gist960.h5`` (the normalised 960-d GIST).
   Work is done in chunks saved under ``SET.h5.parts/``; a re-run after a crash continues from
   the last finished chunk. ``--shard I/N`` describes one slice (see `isc_qk.shard`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import check_config, save_config
from .errors import UserError
from .gist_pca import PCAModel, describe_gist_files, fit_pca
from .images import list_images
from .io import Descriptors, atomic_path, write_descriptors
from .progress import console, progress_bar
from .shard import Shard, shard_file


@dataclass
class GistPCAConfig:
    n_train: int | None = 10000  # None: every training image
    seed: int = 0
    dim: int = 256
    train_dir: str = ""


@dataclass
class GistSetReport:
    n_described: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    out_256: Path | None = None
    out_960: Path | None = None
    skipped: bool = False


def pca_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "pca.npz"


def gist960_path(out_h5: str | os.PathLike) -> Path:
    p = Path(out_h5)
    return p.with_name(p.name[: -len(".h5")] + ".gist960.h5" if p.name.endswith(".h5") else p.name + ".gist960.h5")


def fit_gist_pca(
    train_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_train: int | None = 10000,
    seed: int = 0,
    dim: int = 256,
    workers: int = 1,
) -> Path:
    """Fit the GIST PCA on a seeded sample of training images; skip if already fitted alike."""
    out_dir = Path(out_dir)
    cfg = GistPCAConfig(n_train=n_train, seed=seed, dim=dim, train_dir=str(Path(train_dir).resolve()))
    cfg_path = out_dir / "gist_pca_config.json"
    if check_config(cfg_path, cfg, "GIST PCA", ignore=("train_dir",)) and pca_path(out_dir).is_file():
        return pca_path(out_dir)
    files = list_images(train_dir)
    rng = np.random.default_rng(seed)
    if n_train is not None and n_train < len(files):
        files = [files[i] for i in sorted(rng.choice(len(files), n_train, replace=False))]
    if len(files) < dim:
        raise UserError(f"{train_dir}: {len(files)} training images, need at least {dim} to fit a {dim}-d PCA")
    with progress_bar(transient=True) as bar:
        bar.add_task(f"GIST of {len(files)} training images", total=None)
        res = describe_gist_files([f.path for f in files], workers=workers)
    _report_failures(res.failures)
    if len(res.ids) < dim:
        raise UserError(f"{train_dir}: only {len(res.ids)} readable training images, need {dim}")
    model = fit_pca(res.gist960, dim=dim, seed=seed, train_ids=res.ids)
    model.save(pca_path(out_dir))
    save_config(cfg_path, cfg, "GIST PCA")
    return pca_path(out_dir)


def describe_gist_set(
    pca: str | os.PathLike | PCAModel,
    images_dir: str | os.PathLike,
    out_h5: str | os.PathLike,
    workers: int = 1,
    shard: Shard | None = None,
    chunk: int = 2048,
    progress: bool = True,
) -> GistSetReport:
    """Write GIST-PCA256 and GIST-960 descriptors of every image of a folder (or one shard)."""
    shard = shard or Shard(0, 1)
    model = pca if isinstance(pca, PCAModel) else _load_pca(pca)
    out, out960 = shard_file(out_h5, shard), shard_file(gist960_path(out_h5), shard)
    if out.is_file() and out960.is_file():
        return GistSetReport(0, out_256=out, out_960=out960, skipped=True)
    files = shard.select(list_images(images_dir))
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    fingerprint = {"ids": [f.id for f in files], "pca_mean": float(np.sum(model.mean)), "chunk": chunk}
    check_config(parts / "config.json", fingerprint, "partial GIST run")
    save_config(parts / "config.json", fingerprint, "partial GIST run")

    starts = list(range(0, len(files), chunk))
    with progress_bar() as bar:
        task = bar.add_task(f"GIST {Path(images_dir).name}", total=len(files), visible=progress)
        for k, s in enumerate(starts):
            part = parts / f"part-{k:05d}.npz"
            batch = files[s : s + chunk]
            if not part.is_file():
                res = describe_gist_files([f.path for f in batch], pca=model, workers=workers, batch=256)
                with atomic_path(part) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(
                            fh,
                            ids=np.array(res.ids, dtype=object).astype(str),
                            g960=res.gist960,
                            g256=res.gist256,
                            failures=np.array([f"{p}\t{w}" for p, w in res.failures], dtype=str),
                        )
            bar.advance(task, len(batch))

    ids: list[str] = []
    g960, g256, failures = [], [], []
    for k in range(len(starts)):
        with np.load(parts / f"part-{k:05d}.npz") as z:
            ids += [str(i) for i in z["ids"]]
            g960.append(z["g960"])
            g256.append(z["g256"])
            failures += [tuple(f.split("\t", 1)) for f in z["failures"]]
    _report_failures(failures)  # type: ignore[arg-type]
    if not ids:
        raise UserError(f"{images_dir}: no readable image")
    write_descriptors(out960, Descriptors(ids, np.concatenate(g960)))
    write_descriptors(out, Descriptors(ids, np.concatenate(g256)))
    shutil.rmtree(parts, ignore_errors=True)
    return GistSetReport(len(ids), failures, out, out960)  # type: ignore[arg-type]


def merge_gist_shards(out_h5: str | os.PathLike) -> tuple[Path, Path]:
    """Join the shards of both outputs (SET.h5 and SET.gist960.h5) of `describe_gist_set`."""
    from .shard import merge_descriptor_shards

    return merge_descriptor_shards(out_h5), merge_descriptor_shards(gist960_path(out_h5))


def _load_pca(path: str | os.PathLike) -> PCAModel:
    path = Path(path)
    if path.is_dir():
        path = pca_path(path)
    if not path.is_file():
        raise UserError(f"{path}: GIST PCA not found (run `isc-qk gist-pca --train DIR --out DIR` first)")
    try:
        return PCAModel.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a GIST PCA file ({e})") from None


def _report_failures(failures: list[tuple[str, str]]) -> None:
    if failures:
        console.print(f"[yellow]warning:[/] skipped {len(failures)} unreadable image(s):")
        for p, why in failures[:20]:
            console.print(f"  {p}: {why}", highlight=False)
        if len(failures) > 20:
            console.print(f"  ... and {len(failures) - 20} more")
