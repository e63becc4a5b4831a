"""THE per-image stage runner: list images, shard, decode with one error policy, encode,
write resumable rows.

Every stage that turns each image of a folder into one row (`gist-pca`/`descriptor-pca`
describing a set, `precompute`, `describe`, the training caches) runs through here, so they
cannot differ in which files they read, in what order, how a bad file is treated, or how an
interrupted run resumes:

* `select_images`: the folder's images (`formats.images.list_images`, sorted by id) and the
  `--shard I/N` slice of them;
* `decode_file`: THE error policy. A file that cannot be decoded (`BadImage`), or on which a
  decoder fails in any other way (a bug on one odd file must not kill a million-image run), is
  listed with its reason and gets no row; only running out of memory stops the run;
* `ChunkReader`: chunks of consecutive files decoded by a thread pool (PIL releases the GIL),
  one chunk ahead of the model (`one_ahead`);
* `fill_from_images`: the chunks' rows into the artifact's resumable ``partial.npy``
  (`stages.rows.fill_rows`); the stage then writes its output (a table, an HDF5 set).

A job says what each image must become with ``decoders`` (per image, in the threads: resizing,
GIST's 32x32 preprocessing...) and ``rows`` (per chunk, in the main thread: the models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import multiprocessing
import signal
import sys
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from itertools import repeat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from ..errors import UserError
from ..formats.images import BadImage, ImageFile, list_images, load_rgb
from .artifact import Artifact
from .rows import Filled, fill_rows
from .shards import Shard

R = TypeVar("R")
Decoder = Callable[[Any], Any]


# --------------------------------------------------------------------------- which files
def select_images(images_dir: str | Path, shard: Shard) -> tuple[list[ImageFile], list[ImageFile]]:
    """(every image of the folder, the shard's slice of them); UserError for an empty slice."""
    images = list_images(images_dir)
    files = shard.select(images)
    if not files:
        raise UserError(f"{images_dir}: shard {shard} has no images ({len(images)} images for {shard.count} shards)")
    return images, files


# --------------------------------------------------------------------------- decoding
def decode_file(path: str | Path, decoders: Sequence[Decoder]) -> tuple[list | None, str | None]:
    """([each decoder's output], None), or (None, reason) for a file that is skipped."""
    try:
        image = load_rgb(path)
        return [d(image) for d in decoders], None
    except BadImage as e:
        return None, str(e)
    except MemoryError:
        raise
    except Exception as e:  # a decoder bug on one odd file must not kill a long run
        first = str(e).splitlines()[0] if str(e) else "unreadable"
        return None, f"{path}: {type(e).__name__}: {first[:200]}"


@dataclass
class DecodedChunk:
    """files[first:first+n] decoded: ``values[i][j]`` = decoder j's output for file i (None for a
    bad file); ``bad`` = absolute row -> reason."""

    first: int
    n: int
    values: list[list | None]
    bad: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    @property
    def ok(self) -> list[int]:
        """Positions (within the chunk) of the files that decoded."""
        return [i for i, v in enumerate(self.values) if v is not None]

    def column(self, j: int) -> list:
        """Decoder j's outputs of the good files, in order."""
        return [v[j] for v in self.values if v is not None]


def decode_chunk(files: Sequence[ImageFile], first: int, decoders: Sequence[Decoder],
                 pool: Executor | None = None) -> DecodedChunk:
    paths = [str(f.path) for f in files]
    if pool is None:
        results = [decode_file(p, decoders) for p in paths]
    else:  # a process pool gets its files in a few slices (one message each), threads one by one
        slices = max(1, len(paths) // (4 * getattr(pool, "_max_workers", 1))) if isinstance(pool, ProcessPoolExecutor) else 1
        results = list(pool.map(decode_file, paths, repeat(decoders), chunksize=slices))
    bad = {first + i: err for i, (_, err) in enumerate(results) if err is not None}
    return DecodedChunk(first, len(files), [v for v, _ in results], bad)


def decode_pool(workers: int, processes: bool = False) -> Executor:
    """Workers decoding the files of one chunk in parallel: threads (PIL decodes and resizes
    without the GIL), or with `processes` (decoders that compute in Python/NumPy holding the GIL,
    such as GIST, and that pickle) forked worker processes, which leave Ctrl-C to the parent.

    Only forked, and only while TensorFlow has not started here: forking its threads can
    deadlock, and a spawned worker re-imports the caller's main module (a user's script without
    a ``__main__`` guard would run again in every worker). Threads then, as in training."""
    if processes and workers > 1 and "tensorflow" not in sys.modules and "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)
    return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def one_ahead(tasks: Iterable[Callable[[], R]]) -> Iterator[R]:
    """Run each task in a background thread, one task ahead of the consumer, results in order.

    The next chunk is decoded while the current one is in the model; results are identical to
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

    Why: OpenBLAS's threads busy-wait after every call. The start PCA of a chunk (a float64
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
    """`reader(start, stop)` -> the chunk, decoded (and prepared by `prepare`) one chunk ahead.

    `fill_rows` asks for consecutive chunks starting wherever an earlier run stopped; the first
    call fixes that start, after which the next chunk is always being prepared in the
    background. numpy's BLAS is single-threaded while the reader is open (`single_threaded_blas`).
    """

    def __init__(self, files: Sequence[ImageFile], decoders: Sequence[Decoder], chunk: int, workers: int,
                 prepare: Callable[[DecodedChunk], Any] = lambda c: c, processes: bool = False) -> None:
        self.files, self.decoders, self.chunk, self.prepare = files, list(decoders), chunk, prepare
        self.pool = decode_pool(workers, processes)
        self._it: Iterator | None = None
        self._blas = single_threaded_blas()  # before the prefetch thread exists: no BLAS call runs

    def _tasks(self, start: int) -> Iterator[Callable[[], Any]]:
        for s in range(start, len(self.files), self.chunk):
            e = min(s + self.chunk, len(self.files))
            yield lambda s=s, e=e: (s, e, self.prepare(decode_chunk(self.files[s:e], s, self.decoders, self.pool)))

    def __call__(self, start: int, stop: int):
        if self._it is None:
            self._it = one_ahead(self._tasks(start))
        first, end, out = next(self._it)
        if (first, end) != (start, stop):  # a bug in the caller, not the user
            raise AssertionError(f"chunk {start}:{stop} requested, {first}:{end} prefetched")
        return out

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


# --------------------------------------------------------------------------- the rows
class PerImageJob(Protocol):
    """What a per-image stage computes: `width` columns of `dtype` per image."""

    width: int
    dtype: str
    decoders: Sequence[Decoder]
    processes: bool  # decode in worker processes (`decode_pool`)

    def prepare(self, chunk: DecodedChunk) -> Any:
        """Work done in the prefetch thread on a decoded chunk (e.g. a start's PCA)."""

    def rows(self, prepared: Any) -> tuple[np.ndarray, dict[int, str]]:
        """(n, width) rows of a prepared chunk (bad files' rows are ignored) and its bad files."""


def fill_from_images(art: Artifact, files: Sequence[ImageFile], job: PerImageJob, chunk: int, workers: int,
                     on_rows: Callable[[int], None] | None = None) -> Filled:
    """Fill ``art.partial`` with one row per file (resuming an interrupted run)."""
    with ChunkReader(files, job.decoders, chunk, workers, job.prepare, getattr(job, "processes", False)) as reader:
        return fill_rows(art, len(files), job.width, job.dtype, lambda s, e: job.rows(reader(s, e)), chunk, on_rows)
