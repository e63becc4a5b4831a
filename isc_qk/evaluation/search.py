"""Exact L2 search for the evaluation: the global top-N pairs, or k neighbours per query.

Why a custom driver around faiss: the ISC rule keeps the N (query, reference) pairs with the
smallest squared L2 distance over ALL queries (one global threshold), and at ISC scale
(50k queries x 1M references) all distances cannot be held in memory. So queries are
streamed in batches through faiss's exhaustive L2 range search with a radius that shrinks as the
running N-th smallest distance improves; only pairs that can still be in the final top N are
kept (at most about 2 N at any time plus one batch's results), then the N smallest are taken.

Exactness: the kept pool always contains every pair with distance <= the running N-th
smallest distance (an upper bound of the final one), so the final crop equals brute force.
Ties at the cut are broken by (query row, reference row), which makes the result
deterministic. (The official evaluator breaks such ties arbitrarily with `argpartition`, and
can even return fewer than N pairs when many pairs are tied exactly at its radius.)

Distances are faiss's own: queries are batched like the official evaluator (32, 64, ...
doubling up to 32768 queries) so that every pair goes through the same faiss kernel
(direct or BLAS) as it would there, which keeps the scores bit-identical with it on the
same faiss build.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

FIRST_BATCH = 32
MAX_BATCH_GROWTH = 20000  # batches double while smaller than this (as the official tool)


@dataclass
class Pairs:
    """Retrieved (query row, reference row, squared L2 distance) triples, best first."""

    query: np.ndarray  # int64 row indices into the query matrix
    reference: np.ndarray  # int64 row indices into the reference matrix
    distance: np.ndarray  # float32 squared L2 distances (faiss's)

    def __len__(self) -> int:
        return len(self.distance)

    @property
    def scores(self) -> np.ndarray:
        """ISC score: the negated squared distance (higher = more similar)."""
        return -self.distance.astype(np.float64)


def query_batches(n: int) -> Iterator[tuple[int, int]]:
    """(start, end) of batches of 32, 64, 128, ... rows (doubling while < 20000)."""
    start, size = 0, FIRST_BATCH
    while start < n:
        end = min(n, start + size)
        yield start, end
        start = end
        if size < MAX_BATCH_GROWTH:
            size *= 2


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run faiss with `threads` OpenMP threads (None: leave faiss's setting), then restore."""
    import faiss

    if threads is None:
        yield
        return
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _check_inputs(xq: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if xq.ndim != 2 or xb.ndim != 2:
        raise UserError("query and reference descriptors must be 2-D arrays")
    if xq.shape[1] != xb.shape[1]:
        raise UserError(f"query dimension {xq.shape[1]} differs from reference dimension {xb.shape[1]}")
    for what, x in (("query", xq), ("reference", xb)):
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.einsum("ij,ij->i", x, x)  # float32, as faiss computes them
        if not np.isfinite(norms).all():
            raise UserError(f"{what} descriptors are too large (up to {np.abs(x).max():.3g}): their squared L2 norms "
                            "overflow float32; descriptors are expected to be of order 1 (L2-normalise them)")
    return xq, xb


def _range_search(xq: np.ndarray, xb: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss's exhaustive L2 range search (pairs with d < radius) WITHOUT copying `xb` into an
    index: an `IndexFlatL2` would hold a second copy of all references (1 GB at ISC scale).
    Same kernel as `IndexFlatL2.range_search`, so the same distances."""
    import faiss
    from faiss.loader import rev_swig_ptr

    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq, d = xq.shape
    res = faiss.RangeSearchResult(nq)
    faiss.range_search_L2sqr(faiss.swig_ptr(xq), faiss.swig_ptr(xb), d, nq, len(xb), float(radius), res)
    lims = rev_swig_ptr(res.lims, nq + 1).copy().astype(np.int64)
    n = int(lims[-1])
    dist = rev_swig_ptr(res.distances, n).copy()
    ref = rev_swig_ptr(res.labels, n).copy().astype(np.int64, copy=False)
    del res
    return lims, dist, ref


def _sorted_pairs(q: np.ndarray, r: np.ndarray, d: np.ndarray, n: int | None = None) -> Pairs:
    """Sort by (distance, query row, reference row) and keep the first n."""
    order = np.lexsort((r, q, d))
    if n is not None:
        order = order[:n]
    return Pairs(q[order].astype(np.int64), r[order].astype(np.int64), d[order].astype(np.float32))


def _first_radius(xq: np.ndarray, xb: np.ndarray, n: int) -> float:
    """A radius that surely holds the global top n, for the first batch.

    Without it the first range search would return every pair of the batch (32 x 1M at ISC
    scale). The n-th smallest distance among the batch's k nearest neighbours (k = n / batch)
    bounds the global n-th smallest from above; a small margin covers the last-bit differences
    between faiss's kNN and range-search kernels, so it only costs a few extra pairs.
    """
    import faiss

    if len(xq) * len(xb) <= 2 * n:
        return float("inf")
    k = min(len(xb), -(-n // len(xq)))
    dist, _ = faiss.knn(xq, xb, k)
    bound = float(np.partition(dist.ravel(), n - 1)[n - 1])
    return bound * (1 + 1e-4) + 1e-6


def global_top_pairs(
    xq: np.ndarray,
    xb: np.ndarray,
    max_results: int,
    threads: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Pairs:
    """The `max_results` pairs with the smallest squared L2 distance over all queries (exact).

    `on_batch(n_queries_done)` is called after each batch (for a progress bar).
    """
    if max_results < 1:
        raise UserError(f"max results must be >= 1, got {max_results}")
    xq, xb = _check_inputs(xq, xb)
    n = max_results
    parts_q: list[np.ndarray] = []
    parts_r: list[np.ndarray] = []
    parts_d: list[np.ndarray] = []
    pool = 0
    tau = np.float32(np.inf)  # running n-th smallest distance (an upper bound of the final one)
    with faiss_threads(threads):
        for i0, i1 in query_batches(len(xq)):
            if np.isfinite(tau):
                # faiss keeps d < radius; the next float above tau keeps d <= tau (ties included)
                radius = float(np.nextafter(tau, np.float32(np.inf)))
            else:
                radius = _first_radius(xq[i0:i1], xb, n)
            lims, dist, ref = _range_search(xq[i0:i1], xb, radius)
            counts = np.diff(lims)
            parts_q.append(np.repeat(np.arange(i0, i1, dtype=np.int64), counts))
            parts_r.append(ref)
            parts_d.append(dist)
            pool += len(dist)
            if pool >= n:
                q, r, d = (np.concatenate(p) for p in (parts_q, parts_r, parts_d))
                tau = np.partition(d, n - 1)[n - 1]
                keep = d <= tau
                parts_q, parts_r, parts_d = [q[keep]], [r[keep]], [d[keep]]
                pool = int(keep.sum())
            if on_batch is not None:
                on_batch(i1)
    if not parts_d:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    q, r, d = (np.concatenate(p) for p in (parts_q, parts_r, parts_d))
    return _sorted_pairs(q, r, d, n)


def knn_pairs(
    xq: np.ndarray,
    xb: np.ndarray,
    k: int,
    threads: int | None = None,
) -> Pairs:
    """The k nearest references of every query (k capped at the number of references).

    Not the ISC rule (which is global); kept to compare with per-query kNN evaluations. Uses
    one `faiss.knn` call over all queries, as the official evaluator's kNN mode does.
    """
    import faiss

    if k < 1:
        raise UserError(f"--knn must be >= 1, got {k}")
    xq, xb = _check_inputs(xq, xb)
    k = min(k, len(xb))
    with faiss_threads(threads):
        dist, ref = faiss.knn(xq, xb, k)
    q = np.repeat(np.arange(len(xq), dtype=np.int64), k)
    return _sorted_pairs(q, ref.ravel().astype(np.int64), dist.ravel())
