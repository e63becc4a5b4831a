"""SSCD on an image and on its mirror image, averaged: a frozen encoder that does not see a
horizontal flip, one of the commonest copy edits (``sscd-flip``, with SSCD's resizings:
``sscd-flip@sq288``).

Two views per image through the same unmodified model file, the mean of their L2-normalised
embeddings, L2-normalised again. Costs twice SSCD.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..stages import fingerprint
from ..vectors import l2_normalize
from .names import Name
from .onnx import OnnxEncoder, model_file
from .registry import register


@register("sscd-flip")
class SscdFlip(OnnxEncoder):
    kind = "frozen ONNX embedder (image + mirror image)"

    @classmethod
    def create(cls, name: Name, *, trainable: bool, weights: str | None, folder: Path | None) -> "SscdFlip":
        return _encoder(name)

    @classmethod
    def available(cls, name: Name) -> bool:
        return OnnxEncoder.available(Name("sscd"))

    def __init__(self, name: Name) -> None:
        super().__init__(Name("sscd", None, name.resize))  # the wheel's SSCD file, this resizing
        self.name = name

    def decode(self, image) -> np.ndarray:
        view = super().decode(image)
        return np.stack([view, view[:, ::-1]])  # (2, H, W, 3): the image and its mirror

    def encode(self, decoded: Sequence[np.ndarray], pad_to: int | None = None) -> np.ndarray:
        views = super().encode([v for pair in decoded for v in pair])
        return l2_normalize(views[0::2] + views[1::2])

    def fingerprint(self) -> str:
        return fingerprint.of_bytes(fingerprint.of_file(model_file(Name("sscd"))), str(self.name.resize), "flip")


@lru_cache(maxsize=4)
def _encoder(name: Name) -> SscdFlip:
    return SscdFlip(name)
