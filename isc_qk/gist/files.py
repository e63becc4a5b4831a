"""Decoding + GIST for lists of image files, in worker processes, with unreadable files reported.

Every file goes through the one image loader (`formats.images.load_rgb`) and the official
32x32 preprocessing (`gist.descriptor.preprocess`), then lear_gist's colour GIST and L2
normalisation; a PCA, when given, projects to GIST-PCA256.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Sequence

import numpy as np

from ..formats.ids import image_id
from ..formats.images import BadImage, load_rgb
from ..formats.pca import PCAModel
from ..vectors import l2_normalize
from .descriptor import GIST_DIM, compute_gist, preprocess


def _describe_one(path: str) -> tuple[np.ndarray | None, str | None]:
    """Decode + preprocess one file; returns (32x32x3 uint8, None) or (None, reason)."""
    try:
        return preprocess(load_rgb(path)), None
    except BadImage as e:  # the caller reports the file and goes on
        return None, str(e).removeprefix(f"{path}: ")


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
    g960 = l2_normalize(raw) if len(raw) else raw
    g256 = pca.transform(g960) if pca is not None else None
    return GistResult(ids=ids, gist960=g960, gist256=g256, failures=failures)
