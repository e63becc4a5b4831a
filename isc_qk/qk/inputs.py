"""Model inputs for a batch of image files, from ONE decode per image.

Why one module: precompute, describe and training all feed the QK model the same inputs, and
they must be computed identically everywhere, or a descriptor at test time would not be the
descriptor the model was trained on. What a model side needs is its `InputPlan`:

* pixels (a trainable Keras backbone): RGB resized to the input size (bilinear), float32 in
  [0, 255];
* features (a frozen ONNX backbone): its L2-normalised embedding (`models.onnx_model`);
* start vectors: the start descriptor (GIST of the 32x32 preprocessed image, or an ONNX
  embedding), then the model's PCA (and L2 for embeddings) - the same values as the
  `descriptor-pca` / `gist-pca` baselines give (`starts`).

Each file is decoded once in a thread pool (PIL decoding releases the GIL); an ONNX backbone
that is also the start descriptor runs once. `one_ahead` prepares the next batch in the
background while the current one runs through the model. Unreadable files are reported, never
fatal: their rows are zeros and listed in `Batch.bad`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ..formats.images import BadImage, ImageFile, load_rgb
from ..formats.pca import PCAModel
from ..starts.registry import StartDescriptor

R = TypeVar("R")


@dataclass(frozen=True)
class InputPlan:
    """What a batch of images must become for one model side (each part optional)."""

    size: int | None = None  # pixels for a Keras backbone of this input size
    frozen: str | None = None  # features of this frozen ONNX backbone
    start: StartDescriptor | None = None  # start vectors of this descriptor...
    pca: PCAModel | None = None  # ...through this PCA

    @classmethod
    def for_model(cls, model, backbone: bool = True, start: bool = True) -> "InputPlan":
        return cls(size=model.spec.input_size if backbone and not model.onnx else None,
                   frozen=model.cfg.backbone if backbone and model.onnx else None,
                   start=model.start if start else None, pca=model.pca if start else None)

    @property
    def needs_image(self) -> bool:
        return self.frozen is not None or (self.start is not None and not self.start.is_gist)


@dataclass
class Batch:
    """Inputs for files[first:first+n]; rows of unreadable files are zeros and listed in `bad`."""

    first: int
    n: int
    pixels: np.ndarray | None = None  # float32 (n, S, S, 3) in [0, 255]
    feats: np.ndarray | None = None  # float32 (n, D): a frozen backbone's features
    starts: np.ndarray | None = None  # float32 (n, dim): start vectors
    bad: dict[int, str] = field(default_factory=dict)  # absolute row -> reason

    def __len__(self) -> int:
        return self.n

    @property
    def gist256(self) -> np.ndarray | None:  # the paper's name for the start vectors
        return self.starts

    @property
    def backbone_input(self) -> np.ndarray:
        """What `QKModel.features` takes as `images`: pixels, or a frozen backbone's features."""
        return self.pixels if self.pixels is not None else self.feats


def _decode(path, plan: InputPlan) -> tuple:
    from PIL import Image

    from ..gist.descriptor import preprocess

    im = load_rgb(path)
    pixels = np.asarray(im.resize((plan.size, plan.size), Image.BILINEAR), dtype=np.uint8) if plan.size else None
    small = preprocess(im) if plan.start is not None and plan.start.is_gist else None
    return pixels, small, im if plan.needs_image else None


def load_batch(files: Sequence[ImageFile], first: int, plan: InputPlan, pool: ThreadPoolExecutor | None = None) -> Batch:
    """Decode files (numbered from `first`) into what `plan` asks for."""
    from ..models.onnx_model import embedder

    n = len(files)
    jobs = [lambda f=f: _decode(f.path, plan) for f in files]
    results = list(pool.map(lambda j: _safe(j), jobs)) if pool else [_safe(j) for j in jobs]
    bad = {first + i: err for i, (_, err) in enumerate(results) if err is not None}
    ok = [i for i, (_, err) in enumerate(results) if err is None]
    batch = Batch(first, n, bad=bad)
    if plan.size:
        batch.pixels = np.zeros((n, plan.size, plan.size, 3), np.float32)
        for i in ok:
            batch.pixels[i] = results[i][0][0]
    images = [results[i][0][2] for i in ok] if plan.needs_image else []
    if plan.frozen is not None:
        batch.feats = np.zeros((n, embedder(plan.frozen).dim), np.float32)
        if ok:
            batch.feats[ok] = embedder(plan.frozen).embed(images)
    if plan.start is not None:
        batch.starts = np.zeros((n, plan.pca.dim), np.float32)
        if ok:
            if plan.start.is_gist:
                from ..gist.descriptor import gist_descriptors

                raw = gist_descriptors(np.stack([results[i][0][1] for i in ok]))
            elif plan.frozen == plan.start.name:  # the backbone IS the start descriptor: run it once
                raw = batch.feats[ok]
            else:
                raw = plan.start.from_images(images)
            batch.starts[ok] = plan.start.start(plan.pca, raw)
    return batch


def run_padded(fn: Callable, size: int, *arrays: np.ndarray) -> np.ndarray:
    """`fn(*arrays)` with the batch padded (zeros) to `size` rows, the padding cut off again.

    Why: oneDNN picks its convolution algorithm by batch size, and different algorithms round
    differently, so the short last chunk of a run (or of a shard) would give a descriptor that
    differs in the last bits from the same image inside a full chunk. With every call at one
    shape, a sharded run equals the unsharded one bit for bit, whatever the chunk boundaries.
    """
    import tensorflow as tf

    n = len(arrays[0])
    if n < size:
        arrays = tuple(np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) for a in arrays)
    return fn(*(tf.constant(a) for a in arrays)).numpy()[:n]


def _safe(job: Callable) -> tuple[object, str | None]:
    try:
        return job(), None
    except BadImage as e:
        return None, str(e)
    except Exception as e:  # a decoder bug on one odd file must not kill a long run
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def decode_pool(workers: int) -> ThreadPoolExecutor:
    """Threads for decoding the files of one batch in parallel."""
    return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")


def one_ahead(tasks: Iterable[Callable[[], R]]) -> Iterator[R]:
    """Run each task in a background thread, one task ahead of the consumer, results in order.

    The next batch is decoded while the current one is in the model; results are identical to
    running the tasks in sequence, so data order (and exact resume) does not depend on timing.
    """
    it = iter(tasks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as ahead:
        first = next(it, None)
        if first is None:
            return
        nxt: Future = ahead.submit(first)
        while True:
            cur = nxt
            task = next(it, None)
            if task is not None:
                nxt = ahead.submit(task)
            yield cur.result()
            if task is None:
                return


def single_threaded_blas():
    """Limit numpy's BLAS (OpenBLAS) to one thread until `.restore_original_limits()`.

    Why: OpenBLAS's threads busy-wait after every call. The start PCA of a batch (a float64
    32 x 960 x 256 product, `PCAModel.transform`) runs in the prefetch thread while the model
    runs; with two BLAS threads it spun a core the model needed (28 ms of CPU per call instead
    of 0.6 ms, 2 shared cores), which cost precompute/describe a quarter of the model's speed.
    OpenBLAS splits a product by rows and columns, never along the sum, and the product is
    float64 rounded to float32: the rows are bit-identical with one thread (tested). No-op
    without threadpoolctl (a scikit-learn dependency).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return None
    return threadpool_limits(1, user_api="blas")


class ChunkReader:
    """`compute(start, stop)` callbacks for `stages.rows.fill_rows`, served from a prefetch queue.

    `fill_rows` asks for consecutive chunks starting wherever an earlier run stopped; the first
    call fixes that start, after which the next chunk is always being decoded in the background.
    numpy's BLAS is single-threaded while the reader is open (`single_threaded_blas`).
    """

    def __init__(self, files: Sequence[ImageFile], plan: InputPlan, chunk: int, workers: int) -> None:
        self.files, self.plan, self.chunk = files, plan, chunk
        self.pool = decode_pool(workers)
        self._it: Iterator[Batch] | None = None
        self._blas = single_threaded_blas()  # before the prefetch thread exists: no BLAS call runs

    def _tasks(self, start: int) -> Iterator[Callable[[], Batch]]:
        for s in range(start, len(self.files), self.chunk):
            e = min(s + self.chunk, len(self.files))
            yield lambda s=s, e=e: load_batch(self.files[s:e], s, self.plan, self.pool)

    def __call__(self, start: int, stop: int) -> Batch:
        if self._it is None:
            self._it = one_ahead(self._tasks(start))
        batch = next(self._it)
        if batch.first != start or len(batch) != stop - start:  # a bug in the caller, not the user
            raise AssertionError(f"chunk {start}:{stop} requested, {batch.first}:+{len(batch)} prefetched")
        return batch

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]
        self.pool.shutdown(wait=True)
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None

    def __enter__(self) -> "ChunkReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
