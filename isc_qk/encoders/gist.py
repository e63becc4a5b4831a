"""GIST (lear_gist 1.2's colour GIST, `gist.descriptor`): the ISC2021 baseline, a frozen encoder.

decode: the official 32x32 preprocessing and the raw 960-d GIST of that one image (in the decode
threads: one image at a time is both the fastest and bit-identical to a batch); encode: the
vectors L2-normalised. As a residual start its PCA-256 is NOT re-normalised, as the official
GIST-PCA256 baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..gist.descriptor import GIST_DIM
from ..stages import fingerprint
from .base import Encoder, EncoderSpec
from .names import Name
from .registry import register



@register("gist")
class GistEncoder(Encoder):
    kind = "GIST descriptor"
    decode_in_processes = True  # 32x32 FFTs in NumPy: threads share one core (measured: 679 vs 1,054 images/s)

    @classmethod
    def create(cls, name: Name, *, trainable: bool, weights: str | None, folder: Path | None) -> "GistEncoder":
        return cls(name)

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(dim=GIST_DIM, trainable=False, l2_after_pca=False)

    def decode(self, image) -> np.ndarray:
        from ..gist.descriptor import compute_gist, preprocess

        return compute_gist(preprocess(image)[None])[0]

    def encode(self, decoded: Sequence[np.ndarray], pad_to: int | None = None) -> np.ndarray:
        from ..vectors import l2_normalize

        if not len(decoded):
            return np.zeros((0, GIST_DIM), np.float32)
        return l2_normalize(np.stack(decoded))

    def fingerprint(self) -> str:
        return fingerprint.of_bytes(self.id)
