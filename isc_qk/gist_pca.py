"""GIST-PCA256, the ISC2021 baseline descriptor: GIST 960 (L2-normalised) -> PCA 256, no whitening.

The PCA is fitted on TRAINING images only: fitting it on references would make a pair's
score depend on the other reference images, which the ISC2021 rules forbid. The projection
is ``(x - mean) @ components.T`` with no whitening and no re-normalisation afterwards, as
``faiss.PCAMatrix(960, 256, eigen_power=0)`` does in the official ``gist_baseline.py``.

Also here: decoding + GIST for lists of image files in worker processes, with unreadable
files reported rather than fatal.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np

from .gist import GIST_DIM, compute_gist, l2_normalise, preprocess
from .io import atomic_path, image_id

PCA_DIM = 256


# --------------------------------------------------------------------------- PCA model


@dataclass
class PCAModel:
    """Mean (960,) and components (dim, 960), rows orthonormal, sorted by decreasing variance."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray | None = None
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32).reshape(-1)
        self.components = np.asarray(self.components, dtype=np.float32)
        if self.components.ndim != 2 or self.components.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"PCA components {self.components.shape} do not match mean {self.mean.shape}"
            )

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project rows: (x - mean) @ components.T as float32 (n, dim); no whitening, no norm."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected (n, {self.mean.shape[0]}) descriptors, got {x.shape}")
        # float64 product, then float32: BLAS sums in a batch-size-dependent order, and in float64
        # that never shows after rounding, so a shard's rows equal the unsharded run's rows.
        centred = x.astype(np.float64) - np.asarray(self.mean, np.float64)
        return (centred @ np.asarray(self.components, np.float64).T).astype(np.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (.npz) and ``path`` with suffix .json atomically (temp file + os.replace).

        The JSON beside the arrays records how the model was trained (n_train, seed, dims,
        training ids) so a descriptor file can always be traced back to its PCA.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        arrays = {"mean": self.mean, "components": self.components}
        if self.explained_variance is not None:
            arrays["explained_variance"] = np.asarray(self.explained_variance, dtype=np.float64)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        config = {"dim_in": int(self.mean.shape[0]), "dim_out": self.dim, "whiten": False, **self.config}
        with atomic_path(config_path(path)) as tmp:
            tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCAModel":
        """Read a model written by `save` (the JSON config is optional)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        with np.load(path) as z:
            mean, comps = z["mean"], z["components"]
            var = z["explained_variance"] if "explained_variance" in z.files else None
        cfg_file = config_path(path)
        config = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        return cls(mean=mean, components=comps, explained_variance=var, config=config)


def config_path(npz_path: str | os.PathLike) -> Path:
    """The JSON file that sits beside a PCA .npz (same name, .json suffix)."""
    return Path(npz_path).with_suffix(".json")


def fit_pca(
    x960: np.ndarray,
    dim: int = PCA_DIM,
    *,
    seed: int = 0,
    train_ids: Sequence[str] | None = None,
) -> PCAModel:
    """Fit PCA (no whitening) on the given TRAINING descriptors only (normally L2-normalised GIST).

    Uses sklearn's exact ('full') SVD so the result does not depend on a random solver;
    `seed` is recorded in the config (callers use it to sample the training images).
    """
    from sklearn.decomposition import PCA

    x = np.asarray(x960, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of descriptors, got shape {x.shape}")
    if x.shape[0] < dim:
        raise ValueError(f"need at least {dim} training vectors to fit a {dim}-d PCA, got {x.shape[0]}")
    pca = PCA(n_components=dim, whiten=False, svd_solver="full")
    pca.fit(x.astype(np.float64))
    config = {
        "n_train": int(x.shape[0]),
        "seed": int(seed),
        "train_ids": list(train_ids) if train_ids is not None else None,
    }
    return PCAModel(
        mean=pca.mean_,
        components=pca.components_,
        explained_variance=pca.explained_variance_,
        config=config,
    )


# --------------------------------------------------------------------------- files -> GIST


def _describe_one(path: str) -> tuple[np.ndarray | None, str | None]:
    """Decode + preprocess one file; returns (32x32x3 uint8, None) or (None, reason)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = preprocess(im)
        return arr, None
    except Exception as e:  # any decoder error: the caller reports the file and goes on
        msg = str(e).splitlines()[0] if str(e) else "unreadable"
        return None, f"{type(e).__name__}: {msg}"


def _describe_chunk(paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Worker task: GIST (raw) for the decodable files of a chunk, plus per-file failures."""
    arrays, ok, failures = [], [], []
    for i, p in enumerate(paths):
        arr, err = _describe_one(p)
        if err is None:
            arrays.append(arr)
            ok.append(i)
        else:
            failures.append((i, err))
    if arrays:
        raw = compute_gist(np.stack(arrays))
    else:
        raw = np.zeros((0, GIST_DIM), np.float32)
    return np.asarray(ok, dtype=np.int64), raw, failures


@dataclass
class GistResult:
    """Descriptors of the readable files, in input order, and the files that failed."""

    ids: list[str]
    gist960: np.ndarray  # float32 (n, 960), L2-normalised
    gist256: np.ndarray | None  # float32 (n, 256) when a PCA was given
    failures: list[tuple[str, str]]  # (path, reason)

    def __iter__(self):  # allows: ids, g960, g256, failures = describe_gist_files(...)
        return iter((self.ids, self.gist960, self.gist256, self.failures))


def describe_gist_files(
    paths: Sequence[str | os.PathLike],
    pca: PCAModel | None = None,
    batch: int = 256,
    workers: int = 1,
) -> GistResult:
    """Decode (Pillow) + preprocess + GIST a list of image files, in `workers` processes.

    Files are cut into chunks of `batch` and handed to a process pool with ``imap`` so the
    output keeps the input order whatever the number of workers. Ids are file names
    without their suffix. Unreadable or corrupt files are skipped and listed in
    ``failures`` as (path, reason); they never abort the run.
    """
    paths = [str(p) for p in paths]
    chunks = [paths[i : i + batch] for i in range(0, len(paths), max(1, batch))]
    if workers <= 1 or len(chunks) <= 1:
        results = map(_describe_chunk, chunks)
        return _collect(chunks, results, pca)
    # fork keeps start-up cheap, but forking a process that has started TensorFlow's threads
    # can deadlock, so fall back to spawn then; imap returns results in input order either way
    use_fork = os.name == "posix" and "tensorflow" not in sys.modules
    ctx = get_context("fork" if use_fork else "spawn")
    with ctx.Pool(processes=workers) as pool:
        return _collect(chunks, pool.imap(_describe_chunk, chunks), pca)


def _collect(chunks, results, pca: PCAModel | None) -> GistResult:
    ids: list[str] = []
    raws: list[np.ndarray] = []
    failures: list[tuple[str, str]] = []
    for chunk, (ok, raw, fails) in zip(chunks, results):
        ids.extend(image_id(chunk[i]) for i in ok)
        raws.append(raw)
        failures.extend((chunk[i], why) for i, why in fails)
    raw = np.concatenate(raws) if raws else np.zeros((0, GIST_DIM), np.float32)
    g960 = l2_normalise(raw) if len(raw) else raw
    g256 = pca.transform(g960) if pca is not None else None
    return GistResult(ids=ids, gist960=g960, gist256=g256, failures=failures)
