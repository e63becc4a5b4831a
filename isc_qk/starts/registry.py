"""Frozen descriptors: GIST and ONNX image embeddings, as baselines and as residual starts.

A *start descriptor* maps an image to a raw vector with no training (GIST 960-d, SSCD 512-d,
any ``onnx:PATH`` model); its PCA-256 fitted on TRAINING images only is a baseline
descriptor of its own and the residual start of a QK model (paper fig. 5, generalised):

    start256 = PCA(raw)                 (GIST: as the official baseline, no re-normalisation)
    start256 = L2(PCA(raw))             (embeddings: PCA-256 then L2, as SSCD is evaluated)

Names: ``gist``, ``sscd``, ``sscd-distilled``, ``onnx:PATH`` (`models.onnx_model`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..formats.ids import image_id
from ..formats.images import BadImage, load_rgb
from ..formats.pca import PCAModel
from ..vectors import l2_normalize

GIST = "gist"
ONNX_BATCH = 64  # images decoded and embedded per call of an ONNX start


@dataclass
class RawResult:
    """Raw vectors of the readable files, in input order, and the files that failed."""

    ids: list[str]
    raw: np.ndarray  # float32 (n, raw_dim), L2-normalised
    failures: list[tuple[str, str]]  # (path, reason)


class StartDescriptor:
    """One frozen descriptor: images -> raw L2-normalised vectors; PCA -> start vectors."""

    def __init__(self, name: str) -> None:
        from ..models.onnx_model import is_onnx_name

        if name != GIST and not is_onnx_name(name):
            raise UserError(f"unknown residual start / descriptor {name!r}; choose gist, sscd, sscd-distilled or onnx:PATH")
        self.name = name
        self.is_gist = name == GIST

    @property
    def raw_dim(self) -> int:
        from ..gist.descriptor import GIST_DIM
        from ..models.onnx_model import embedder

        return GIST_DIM if self.is_gist else embedder(self.name).dim

    @property
    def l2_after_pca(self) -> bool:
        return not self.is_gist

    @property
    def slug(self) -> str:
        """File-name part: 'gist', 'sscd', 'sscd_distilled', 'onnx', 'sscd_sq288'..."""
        from ..models.onnx_model import split_name

        base, resize = split_name(self.name)
        stem = "onnx" if base.startswith("onnx:") else base.replace("-", "_")
        return stem + (f"_{resize}" if resize else "")

    @property
    def raw_suffix(self) -> str:
        """Tag of the raw per-set file: ``SET.gist960.h5``, ``SET.sscd512.h5``..."""
        return f"{self.slug}_{self.raw_dim}" if self.slug[-1].isdigit() else f"{self.slug}{self.raw_dim}"

    def fingerprint(self) -> str:
        from ..models.onnx_model import file_fingerprint
        from ..stages import fingerprint

        return fingerprint.of_bytes(self.name) if self.is_gist else file_fingerprint(self.name)

    # ------------------------------------------------------------------ images -> raw
    def from_images(self, images: Sequence) -> np.ndarray:
        """Raw vectors of decoded RGB PIL images (n, raw_dim), L2-normalised."""
        if self.is_gist:
            from ..gist.descriptor import gist_descriptors, preprocess

            return gist_descriptors(np.stack([preprocess(im) for im in images]))
        from ..models.onnx_model import embedder

        return embedder(self.name).embed(list(images))

    def from_files(self, paths: Sequence[str | os.PathLike], workers: int = 1) -> RawResult:
        """Raw vectors of image files; unreadable files are listed, never fatal."""
        if self.is_gist:
            from ..gist.files import describe_gist_files

            res = describe_gist_files(paths, workers=workers)
            return RawResult(res.ids, res.gist960, res.failures)
        ids, parts, failures = [], [], []
        paths = [str(p) for p in paths]
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for s in range(0, len(paths), ONNX_BATCH):
                chunk = paths[s : s + ONNX_BATCH]
                decoded = list(pool.map(_decode, chunk))
                ok = [(p, im) for p, (im, err) in zip(chunk, decoded) if err is None]
                failures += [(p, err) for p, (im, err) in zip(chunk, decoded) if err is not None]
                if ok:
                    parts.append(self.from_images([im for _, im in ok]))
                    ids += [image_id(p) for p, _ in ok]
        raw = np.concatenate(parts) if parts else np.zeros((0, self.raw_dim), np.float32)
        return RawResult(ids, raw, failures)

    # ------------------------------------------------------------------ raw -> start
    def check_pca(self, pca: PCAModel, where: str) -> None:
        """The PCA must have been fitted on this descriptor's raw vectors."""
        fitted_on = pca.config.get("descriptor", GIST)
        if fitted_on != self.name:
            raise UserError(f"{where}: this PCA was fitted on {fitted_on} descriptors, not {self.name}")
        if pca.input_dim != self.raw_dim:
            raise UserError(f"{where}: the PCA takes {pca.input_dim}-d vectors, {self.name} gives {self.raw_dim}-d")

    def start(self, pca: PCAModel, raw: np.ndarray) -> np.ndarray:
        """The start vectors (n, pca.dim) of raw vectors: PCA, then L2 for embeddings and for
        whitened PCAs (whitened GIST has no meaningful length)."""
        x = pca.transform(np.asarray(raw, np.float32))
        return l2_normalize(x) if self.l2_after_pca or pca.whiten else x


def _decode(path: str):
    try:
        return load_rgb(path), None
    except BadImage as e:
        return None, str(e).removeprefix(f"{path}: ")
