"""Model inputs for a batch of image files, from ONE decode per image.

Why one module: precompute, describe and training all feed a QK side the same inputs, and
they must be computed identically everywhere, or a descriptor at test time would not be the
descriptor the model was trained on. What a side needs is its `InputPlan`:

* the backbone's input: pixels kept for a trainable backbone (it runs inside the model), or
  the features of a frozen one, computed here (`encoders.Encoder.encode`);
* start vectors: the start's encoder (GIST of the 32x32 preprocessed image, an ONNX
  embedding), then its PCA (and L2 for embeddings) - the same values as the `descriptor-pca` /
  `gist-pca` baselines give (`starts`).

Each file is decoded once (`stages.runner.decode_chunk`: the one error policy), each distinct
encoder's `decode` runs once per file, and a frozen backbone that is also the start encoder
runs once. Unreadable files are reported, never fatal: their rows are zeros and listed in
`Batch.bad`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..encoders import Encoder
from ..formats.images import ImageFile
from ..stages.runner import DecodedChunk, decode_chunk
from ..starts.start import Start


@dataclass(frozen=True)
class InputPlan:
    """What a batch of images must become for one model side (each part optional)."""

    backbone: Encoder | None = None  # pixels (trainable) or features (frozen) of this encoder
    start: Start | None = None  # start vectors of this start

    @classmethod
    def for_side(cls, side, backbone: bool = True, start: bool = True) -> "InputPlan":
        """The plan of a `models.QKSide`."""
        return cls(backbone=side.encoder if backbone else None, start=side.start if start else None)

    @property
    def encoders(self) -> list[Encoder]:
        """The distinct encoders whose `decode` each file needs (a frozen backbone that is the
        start encoder is decoded and run once)."""
        out: list[Encoder] = []
        for e in (self.backbone, self.start.encoder if self.start else None):
            if e is not None and self._find(out, e) is None:
                out.append(e)
        return out

    def slot(self, encoder: Encoder) -> int:
        """Which of `encoders` (and decoded columns) serves `encoder`."""
        j = self._find(self.encoders, encoder)
        assert j is not None
        return j

    @staticmethod
    def _find(encoders: list[Encoder], e: Encoder) -> int | None:
        """Two frozen encoders of one name give the same vectors; a trainable one is its own."""
        for j, o in enumerate(encoders):
            if o is e or (o.id == e.id and not o.spec.trainable and not e.spec.trainable):
                return j
        return None

    @property
    def decoders(self) -> list[Callable]:
        return [e.decode for e in self.encoders]


@dataclass
class Batch:
    """Inputs for files[first:first+n]; rows of unreadable files are zeros and listed in `bad`."""

    first: int
    n: int
    pixels: np.ndarray | None = None  # float32 (n, S, S, 3) in [0, 255]: a trainable backbone's input
    feats: np.ndarray | None = None  # float32 (n, D): a frozen backbone's features
    starts: np.ndarray | None = None  # float32 (n, dim): start vectors
    bad: dict[int, str] = field(default_factory=dict)  # absolute row -> reason

    def __len__(self) -> int:
        return self.n


def prepare_batch(chunk: DecodedChunk, plan: InputPlan, pad_to: int | None = None) -> Batch:
    """A decoded chunk -> the plan's arrays (frozen encoders run here, on the good files, at the
    batch shape `pad_to`: see `run_padded`)."""
    n, ok = chunk.n, chunk.ok
    batch = Batch(chunk.first, n, bad=chunk.bad)
    encoded: dict[int, np.ndarray] = {}

    def run(enc: Encoder) -> np.ndarray:  # each frozen encoder once per chunk
        j = plan.slot(enc)
        if j not in encoded:
            encoded[j] = enc.encode(chunk.column(j), pad_to=pad_to)
        return encoded[j]

    bb = plan.backbone
    if bb is not None:
        if bb.spec.trainable:
            size = bb.spec.input_size
            batch.pixels = np.zeros((n, size, size, 3), np.float32)
            for i, arr in zip(ok, chunk.column(plan.slot(bb))):
                batch.pixels[i] = arr
        else:
            batch.feats = np.zeros((n, bb.spec.dim), np.float32)
            if ok:
                batch.feats[ok] = run(bb)
    if plan.start is not None:
        batch.starts = np.zeros((n, plan.start.dim), np.float32)
        if ok:
            batch.starts[ok] = plan.start.vectors(run(plan.start.encoder))
    return batch


def load_batch(files: Sequence[ImageFile], first: int, plan: InputPlan, pool: ThreadPoolExecutor | None = None,
               pad_to: int | None = None) -> Batch:
    """Decode files (numbered from `first`) into what `plan` asks for."""
    return prepare_batch(decode_chunk(files, first, plan.decoders, pool), plan, pad_to)


def run_padded(fn: Callable, size: int, *arrays: np.ndarray) -> np.ndarray:
    """`fn(*arrays)` with the batch padded (zeros) to `size` rows, the padding cut off again.

    Why: oneDNN picks its kernels by batch size, and different kernels round differently, so
    the short last chunk of a run (or of a shard) would give a descriptor that differs in the
    last bits from the same image inside a full chunk. With every call at one shape, a sharded
    run equals the unsharded one bit for bit, whatever the chunk boundaries.
    """
    import tensorflow as tf

    n = len(arrays[0])
    if n < size:
        arrays = tuple(np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) for a in arrays)
    return fn(*(tf.constant(a) for a in arrays)).numpy()[:n]
