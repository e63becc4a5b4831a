"""Encoders: every image -> vector producer, behind one small interface (`base.Encoder`).

GIST (`gist`), frozen ONNX embedders at a given resizing (`onnx`: SSCD, any ``onnx:PATH``),
trainable or frozen Keras backbones (`keras`: EfficientNet-Lite, B3, ``tiny``, ``keras:PATH``),
`sscd_flip` (SSCD of an image and its mirror, averaged).
Each declares its name (one grammar: `names`), its spec (output width, trainable or not, input
size), what it needs decoded (`decode`), `encode` and its fingerprint, and registers itself
(`registry`); nothing outside this folder tests what kind an encoder is. `nets/` holds the
network definitions the Keras encoders build (EfficientNet-Lite, its torch-free weights reader).
A residual start is (frozen encoder, PCA) (`starts`); a QK side is (encoder, start, head)
(`models`).
"""

from .base import Encoder, EncoderSpec
from .names import Name, Resize
from .registry import available, choices, create, is_trainable, parse

__all__ = ["Encoder", "EncoderSpec", "Name", "Resize", "available", "choices", "create", "is_trainable", "parse"]
