"""A model side applied to decoded batches: head inputs (feature tables) or descriptors.

One place for the two forward passes the per-image stages run, so `precompute` and
`describe` (with a trainable or a frozen backbone) cannot compute them differently. Keras
calls are tf.functions at one fixed batch shape (`inputs.run_padded`). A frozen backbone's
features were computed while the batch was prepared (`inputs.prepare_batch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .inputs import Batch, InputPlan, prepare_batch, run_padded


def check_side_options(side: str, batch: int) -> None:
    """The options every per-image stage of a model side takes (`precompute`, `describe`)."""
    from ..errors import UserError

    if side not in ("q", "k"):
        raise UserError(f"--side must be q or k, not {side!r}")
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")


def head_inputs(model, side: str, batch_size: int) -> Callable[[Batch], np.ndarray]:
    """batch -> (n, feature_dim + dim) float32: concat(backbone features, start vectors)."""
    if model.frozen:
        return lambda b: np.concatenate([b.feats, b.starts], axis=1).astype(np.float32)
    import tensorflow as tf

    fn = tf.function(lambda px, s: model.features(side, px, s), reduce_retracing=True)
    return lambda b: run_padded(fn, batch_size, b.pixels, b.starts)


def descriptors(model, side: str, batch_size: int) -> Callable[[Batch], np.ndarray]:
    """batch -> (n, dim) float32 descriptors of `side`."""
    import tensorflow as tf

    if model.frozen:
        head = tf.function(lambda x: model.head(side)(x, training=False), reduce_retracing=True)
        inputs = head_inputs(model, side, batch_size)
        return lambda b: run_padded(head, batch_size, inputs(b))
    fn = tf.function(lambda px, s: model.describe(side, px, s), reduce_retracing=True)
    return lambda b: run_padded(fn, batch_size, b.pixels, b.starts)


@dataclass
class SideJob:
    """A per-image runner job (`stages.runner`) for one model side: each chunk decoded for the
    side's `InputPlan` and prepared in the prefetch thread (frozen encoders, start PCA), then
    `fn` (the Keras part) in the main thread."""

    plan: InputPlan
    fn: Callable[[Batch], np.ndarray]
    width: int
    dtype: str
    pad_to: int

    @property
    def decoders(self) -> list:
        return self.plan.decoders

    @property
    def processes(self) -> bool:
        return all(e.decode_in_processes for e in self.plan.encoders)

    def prepare(self, chunk) -> Batch:
        return prepare_batch(chunk, self.plan, self.pad_to)

    def rows(self, batch: Batch) -> tuple[np.ndarray, dict[int, str]]:
        return self.fn(batch).astype(self.dtype), batch.bad
