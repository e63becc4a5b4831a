"""Model inputs for a batch of image files: backbone pixels and GIST-PCA256, from ONE decode.

Why one module: precompute, describe and training all feed the QK model the same two
inputs, and they must be computed identically everywhere, or a descriptor at test time would
not be the descriptor the model was trained on:

* pixels: RGB, resized to the backbone's input size (bilinear), float32 in [0, 255];
* gist256: lear_gist colour GIST of the 32x32 preprocessed image, L2-normalised, then the
  model's PCA (no whitening) - the same values as `gist.files.describe_gist_files` gives.

Each file is decoded once (both inputs come from the same PIL image) in a thread pool (PIL
decoding releases the GIL), and `prefetch` prepares the next batch in the background while
the current one runs through the model. Unreadable files are reported, never fatal: their
rows are zeros and listed in `Batch.bad`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ..formats.images import BadImage, ImageFile, load_rgb

R = TypeVar("R")


@dataclass
class Batch:
    """Inputs for files[start:start+n]; rows of unreadable files are zeros and listed in `bad`."""

    start: int
    pixels: np.ndarray | None  # float32 (n, S, S, 3) in [0, 255], None when not asked for
    gist256: np.ndarray | None  # float32 (n, dim), None when not asked for
    bad: dict[int, str] = field(default_factory=dict)  # absolute row -> reason

    def __len__(self) -> int:
        x = self.pixels if self.pixels is not None else self.gist256
        return 0 if x is None else len(x)


def _decode(path, size: int | None, want_gist: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    from PIL import Image

    from ..gist.descriptor import preprocess

    im = load_rgb(path)
    pixels = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8) if size else None
    small = preprocess(im) if want_gist else None
    return pixels, small


def load_batch(
    files: Sequence[ImageFile],
    start: int,
    size: int | None,
    pca=None,
    pool: ThreadPoolExecutor | None = None,
) -> Batch:
    """Decode files (numbered from `start`) into backbone pixels (if `size`) and gist256 (if `pca`)."""
    from ..gist.descriptor import gist_descriptors

    n = len(files)
    want_gist = pca is not None
    jobs = [lambda f=f: _decode(f.path, size, want_gist) for f in files]
    results = list(pool.map(lambda j: _safe(j), jobs)) if pool else [_safe(j) for j in jobs]
    pixels = np.zeros((n, size, size, 3), np.float32) if size else None
    smalls = np.zeros((n, 32, 32, 3), np.uint8) if want_gist else None
    bad: dict[int, str] = {}
    for i, (res, err) in enumerate(results):
        if err is not None:
            bad[start + i] = err
            continue
        px, small = res
        if pixels is not None:
            pixels[i] = px
        if smalls is not None:
            smalls[i] = small
    gist256 = None
    if want_gist:
        gist256 = np.zeros((n, pca.dim), np.float32)
        ok = [i for i in range(n) if start + i not in bad]
        if ok:
            gist256[ok] = pca.transform(gist_descriptors(smalls[ok]))
    return Batch(start, pixels, gist256, bad)


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


class ChunkReader:
    """`compute(start, stop)` callbacks for `stages.rows.fill_rows`, served from a prefetch queue.

    `fill_rows` asks for consecutive chunks starting wherever an earlier run stopped; the first
    call fixes that start, after which the next chunk is always being decoded in the background.
    """

    def __init__(self, files: Sequence[ImageFile], size: int | None, pca, chunk: int, workers: int) -> None:
        self.files, self.size, self.pca, self.chunk = files, size, pca, chunk
        self.pool = decode_pool(workers)
        self._it: Iterator[Batch] | None = None

    def _tasks(self, start: int) -> Iterator[Callable[[], Batch]]:
        for s in range(start, len(self.files), self.chunk):
            e = min(s + self.chunk, len(self.files))
            yield lambda s=s, e=e: load_batch(self.files[s:e], s, self.size, self.pca, self.pool)

    def __call__(self, start: int, stop: int) -> Batch:
        if self._it is None:
            self._it = one_ahead(self._tasks(start))
        batch = next(self._it)
        if batch.start != start or len(batch) != stop - start:  # a bug in the caller, not the user
            raise AssertionError(f"chunk {start}:{stop} requested, {batch.start}:+{len(batch)} prefetched")
        return batch

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]
        self.pool.shutdown(wait=True)

    def __enter__(self) -> "ChunkReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
