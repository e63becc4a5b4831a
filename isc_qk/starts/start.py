"""A residual start: a frozen encoder and its PCA fitted on TRAINING images.

A *start descriptor* maps an image to a raw vector with no training (GIST 960-d, SSCD 512-d,
any ``onnx:PATH`` model: a frozen `encoders.Encoder`); its PCA-256 fitted on training images
only is a baseline descriptor of its own and the residual start of a QK model (paper fig. 5,
generalised):

    start256 = PCA(raw)                 (GIST: as the official baseline, no re-normalisation)
    start256 = L2(PCA(raw))             (embeddings, and any whitened PCA)

The PCA file names the encoder it was fitted on (``pca.json``: ``descriptor``; older GIST PCAs
name none), so a start is rebuilt from the file alone (`Start.load`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..encoders import Encoder, create, parse
from ..errors import UserError
from ..formats.pca import PCAModel
from ..stages import fingerprint
from ..vectors import l2_normalize

GIST = "gist"


def fitted_on(pca: PCAModel) -> str:
    """The encoder name a PCA was fitted on (older GIST PCAs name none: GIST)."""
    return str(pca.config.get("descriptor", GIST))


def check_pca(encoder: Encoder, pca: PCAModel, where: str) -> None:
    """The PCA must have been fitted on this encoder's raw vectors."""
    if fitted_on(pca) != encoder.id:
        fit = "gist-pca" if encoder.id == GIST else f"descriptor-pca --descriptor {encoder.id}"
        raise UserError(f"{where}: this PCA was fitted on {fitted_on(pca)} descriptors, not {encoder.id} (fit one "
                        f"with `isc-qk {fit} --train DIR --out DIR`, or start from {fitted_on(pca)}: "
                        f"--residual {fitted_on(pca)})")
    if pca.input_dim != encoder.spec.dim:
        raise UserError(f"{where}: the PCA takes {pca.input_dim}-d vectors, {encoder.id} gives {encoder.spec.dim}-d")


class Start:
    """(frozen encoder, PCA): raw vectors -> start vectors."""

    def __init__(self, encoder: Encoder, pca: PCAModel, where: str = "the start PCA") -> None:
        if encoder.spec.trainable:
            raise UserError(f"{encoder.id} is a trainable backbone; a residual start must be a frozen encoder "
                            "(gist, sscd, onnx:PATH...)")
        check_pca(encoder, pca, where)
        self.encoder, self.pca = encoder, pca

    @classmethod
    def load(cls, pca_path: str | os.PathLike, name: str | None = None) -> "Start":
        """The start of a PCA file (its encoder, or `name` which must be the one it was fitted on)."""
        pca = PCAModel.load(pca_path)
        return cls(create(name or fitted_on(pca), trainable=False), pca, str(pca_path))

    @property
    def name(self) -> str:
        return self.encoder.id

    @property
    def slug(self) -> str:
        """File-name part of its caches (``gist``, ``sscd_sq288``...)."""
        return self.encoder.name.slug

    @property
    def dim(self) -> int:
        return self.pca.dim

    @property
    def l2(self) -> bool:
        return self.encoder.spec.l2_after_pca or self.pca.whiten

    def vectors(self, raw: np.ndarray) -> np.ndarray:
        """The start vectors (n, dim) of raw vectors: PCA, then L2 for embeddings and for
        whitened PCAs (whitened GIST has no meaningful length)."""
        x = self.pca.transform(np.asarray(raw, np.float32))
        return l2_normalize(x) if self.l2 else x

    def fingerprint_parts(self) -> tuple[str, str]:
        """(the encoder's, the PCA arrays'): what start vectors depend on."""
        return self.encoder.fingerprint(), fingerprint.of_arrays(self.pca.fingerprint_arrays())


def pca_file_name(name: str) -> str:
    """``gist_pca.npz``, ``sscd_pca.npz``...: a start's PCA inside a model folder."""
    return f"{parse(name).slug}_pca.npz"


def raw_suffix(encoder: Encoder) -> str:
    """Tag of the raw per-set file: ``SET.gist960.h5``, ``SET.sscd512.h5``, ``SET.sscd_sq288_512.h5``."""
    slug = encoder.name.slug
    return f"{slug}_{encoder.spec.dim}" if slug[-1].isdigit() else f"{slug}{encoder.spec.dim}"


def raw_path(out_h5: str | os.PathLike, encoder: Encoder) -> Path:
    """``SET.h5`` -> ``SET.gist960.h5`` (``SET.sscd512.h5`` ...): the raw vectors beside it."""
    p = Path(out_h5)
    tag = f".{raw_suffix(encoder)}.h5"
    return p.with_name(p.name[: -len(".h5")] + tag if p.name.endswith(".h5") else p.name + tag)
