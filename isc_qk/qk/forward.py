"""A model side applied to decoded batches: head inputs (feature tables) or descriptors.

One place for the two forward passes the per-image stages run, so `precompute` and
`describe` (and a Keras or a frozen ONNX backbone) cannot compute them differently. Keras
calls are tf.functions at one fixed batch shape (`inputs.run_padded`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .inputs import Batch, run_padded


def head_inputs(model, side: str, batch_size: int) -> Callable[[Batch], np.ndarray]:
    """batch -> (n, feature_dim + dim) float32: concat(backbone features, start vectors)."""
    if model.onnx:
        return lambda b: np.concatenate([b.feats, b.starts], axis=1).astype(np.float32)
    import tensorflow as tf

    fn = tf.function(lambda px, s: model.features(side, px, s), reduce_retracing=True)
    return lambda b: run_padded(fn, batch_size, b.pixels, b.starts)


def descriptors(model, side: str, batch_size: int) -> Callable[[Batch], np.ndarray]:
    """batch -> (n, dim) float32 descriptors of `side`."""
    import tensorflow as tf

    if model.onnx:
        head = tf.function(lambda x: model.head(side)(x, training=False), reduce_retracing=True)
        inputs = head_inputs(model, side, batch_size)
        return lambda b: run_padded(head, batch_size, inputs(b))
    fn = tf.function(lambda px, s: model.describe(side, px, s), reduce_retracing=True)
    return lambda b: run_padded(fn, batch_size, b.pixels, b.starts)
