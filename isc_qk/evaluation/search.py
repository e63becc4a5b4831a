"""Exact L2 search for the evaluation: the global top-N pairs, or k neighbours per query.

The ISC rule keeps the N (query, reference) pairs with the smallest squared L2 distance over
ALL queries (one global threshold); at ISC scale (50k queries x 1M references) the 5e10
distances cannot all be held, so queries are streamed in batches (32, 64, ... doubling up to
32768, like the official evaluator) and each batch keeps only the pairs at or below a
threshold: the running N-th smallest distance (a proven upper bound of the final cut) or an
estimate of the final cut from the queries done so far, checked at the end (a batch whose
threshold was below the final cut is searched again; `_BoundedSearch`). Ties at the cut are
broken by (query row, reference row), which makes the result deterministic (the official
evaluator breaks them arbitrarily with `argpartition`).

The exact score. faiss's BLAS range search computes ``|x|^2 + |y|^2 - 2 x.y`` with the inner
products from sgemm, whose last bit depends on where the pair falls in the BLAS blocking and
on the thread count: the same pair gets different float32 distances with ``--threads 1`` and
``--threads 2`` (measured on 6k x 20k x 256: 2.4% of the kept scores differ, and their order).
A score that depends on the batching cannot be re-ranked exactly, so the score here is ONE
float32 function of the two vectors (`exact_distances`): the same formula, with faiss's norms
and faiss's per-pair SIMD inner product (position-, batch- and thread-independent), clamped
at 0. Every method below but ``faiss`` returns exactly the same pairs, scores and order.

Methods (``method=``, or the environment variable ``ISC_QK_SEARCH``; default ``auto``):

* ``int8`` / ``fp32``: a first pass with a PROVEN per-pair error bound finds every pair that
  can be inside the running top N (`prefilter`: an exact int8 matmul of quantised vectors, or
  the float32 matmul), then the exact score of those candidates only. ``auto`` picks int8
  where the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX, Arm dot
  product), fp32 elsewhere; without onnxruntime, fp32 through numpy's BLAS.
* ``faiss``: the previous driver, faiss's range search with a shrinking radius; its scores are
  faiss's BLAS distances, the official tool's own arithmetic (same build and thread count),
  for comparisons with it; not re-rankable, so not identical to the others in the last bit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

FIRST_BATCH = 32
MAX_BATCH_GROWTH = 20000  # batches double while smaller than this (as the official tool)
METHODS = ("auto", "int8", "fp32", "faiss")
METHOD_ENV = "ISC_QK_SEARCH"
FIRST_BOUND_FACTOR = 2  # the first bound looks at the batch's 2n closest pairs
ESTIMATE_SAFETY = 2.0  # the estimate is the score below which 2x the expected share of N fell
MAX_NORM = 1e17  # beyond this, float32 squared distances may overflow: the faiss path is used

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
    from ..stages.resources import check_workers

    check_workers(threads, "--threads")
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


def resolve_method(method: str | None = None) -> str:
    """``int8``, ``fp32`` or ``faiss``: `method`, else $ISC_QK_SEARCH, else the CPU's best."""
    from .prefilter import preferred_kind

    method = method or os.environ.get(METHOD_ENV) or "auto"
    if method not in METHODS:
        raise UserError(f"search method must be one of {', '.join(METHODS)}, got {method!r}")
    return preferred_kind() if method == "auto" else method


def norms_sqr(x: np.ndarray) -> np.ndarray:
    """faiss's float32 squared norms (`fvec_norms_L2sqr`, the ones its BLAS path uses)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(len(x), np.float32)
    if len(x):
        faiss.fvec_norms_L2sqr(faiss.swig_ptr(out), faiss.swig_ptr(x), x.shape[1], len(x))
    return out


def exact_distances(
    xq: np.ndarray,
    xb: np.ndarray,
    qi: np.ndarray,
    ri: np.ndarray,
    xq_norms: np.ndarray | None = None,
    xb_norms: np.ndarray | None = None,
) -> np.ndarray:
    """THE score of pairs (xq[qi], xb[ri]): ``max(0, fl(fl(|x|^2 + |y|^2) - 2 fl(x.y)))`` in float32.

    faiss's own norms and per-pair inner product (`pairwise_indexed_inner_product`, one SIMD
    dot product per pair), so the value of a pair depends on nothing but its two vectors.
    """
    import faiss

    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    qi = np.ascontiguousarray(qi, dtype=np.int64)
    ri = np.ascontiguousarray(ri, dtype=np.int64)
    n = len(qi)
    ip = np.empty(n, np.float32)
    if n:
        faiss.pairwise_indexed_inner_product(xq.shape[1], n, faiss.swig_ptr(xq), faiss.swig_ptr(qi),
                                             faiss.swig_ptr(xb), faiss.swig_ptr(ri), faiss.swig_ptr(ip))
    xq_norms = norms_sqr(xq) if xq_norms is None else xq_norms
    xb_norms = norms_sqr(xb) if xb_norms is None else xb_norms
    dist = xq_norms[qi] + xb_norms[ri]
    dist -= 2 * ip
    np.maximum(dist, np.float32(0), out=dist)
    return dist


@dataclass
class SearchStats:
    """What a search did (for benchmarks and tests)."""

    method: str = ""
    kernel: str = ""  # the first pass's matmul: onnxruntime or numpy
    candidates: int = 0  # pairs whose exact score was computed
    kept: int = 0  # of those, pairs with score <= the batch's threshold
    coarse_runs: int = 0  # (query, 256-reference segment) runs looked at element by element
    runs: int = 0
    redone: int = 0  # batches searched again because the estimated cut was too low
    note: str = ""
    batches: list = field(default_factory=list)  # (queries, threshold, candidates, kept) per batch


def global_top_pairs(
    xq: np.ndarray,
    xb: np.ndarray,
    max_results: int,
    threads: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    method: str | None = None,
    stats: SearchStats | None = None,
) -> Pairs:
    """The `max_results` pairs with the smallest squared L2 distance over all queries (exact).

    `on_batch(n_queries_done)` is called after each batch (for a progress bar). `method`:
    see the module docstring (all but ``faiss`` give identical results).
    """
    if max_results < 1:
        raise UserError(f"max results must be >= 1, got {max_results}")
    xq, xb = _check_inputs(xq, xb)
    stats = stats if stats is not None else SearchStats()
    method = resolve_method(method)
    if method != "faiss" and len(xq) and len(xb):
        big = max(float(xq.max()), -float(xq.min()), float(xb.max()), -float(xb.min())) * np.sqrt(xq.shape[1])
        if not big < MAX_NORM:
            stats.note = "norms too large for float32 distances: faiss path"
            method = "faiss"
    stats.method = method
    if method == "faiss" or not len(xq) or not len(xb):
        return _faiss_top_pairs(xq, xb, max_results, threads, on_batch)
    with faiss_threads(threads):
        return _BoundedSearch(xq, xb, max_results, method, threads, stats).run(on_batch)


class _BoundedSearch:
    """First pass with a proven bound (prefilter.Scanner), exact scores of the candidates only.

    Each batch b keeps every pair with score <= theta_b. theta_b is at most the running n-th
    smallest exact score (an upper bound of the final cut), and, once a few hundred queries
    are done, at most an ESTIMATE of the final cut from them (the score below which twice the
    expected share of n fell so far): the estimate saves most of the candidates of the
    batches that follow, and is checked at the end: if the final cut T exceeds some theta_b,
    that batch is searched again with T (then every pair with score <= T is kept, which is
    all the top n needs). Queries are visited in a fixed pseudo-random order so that the
    estimate is unbiased whatever the order of the query file (the result does not depend on
    the order: it is the brute-force top n, ties broken by (query row, reference row)).
    """

    def __init__(self, xq: np.ndarray, xb: np.ndarray, n: int, kind: str, threads: int | None,
                 stats: SearchStats) -> None:
        self.xq, self.xb, self.n, self.kind, self.stats = xq, xb, n, kind, stats
        self.threads = threads
        self.perm = np.random.default_rng(0).permutation(len(xq)).astype(np.int64)
        self.xq_norms, self.xb_norms = norms_sqr(xq), norms_sqr(xb)
        self.scanner = None
        self.bound = np.float32(np.inf)  # a proven upper bound of the final cut
        self.pool_q = np.zeros(0, np.int64)
        self.pool_r = np.zeros(0, np.int64)
        self.pool_d = np.zeros(0, np.float32)

    def run(self, on_batch: Callable[[int], None] | None) -> Pairs:
        try:
            thetas = self._first_pass(on_batch)
            self._check(thetas)
        finally:
            if self.scanner is not None:
                self.stats.coarse_runs, self.stats.runs = self.scanner.n_coarse, self.scanner.n_runs
                self.scanner.close()
        return _sorted_pairs(self.pool_q, self.pool_r, self.pool_d, self.n)

    def _first_pass(self, on_batch: Callable[[int], None] | None) -> dict[tuple[int, int], np.float32]:
        n = self.n
        thetas = {}
        for i0, i1 in query_batches(len(self.xq)):
            estimate = np.float32(np.inf)
            if not np.isfinite(self.bound):
                self.bound, estimate = self._first_bound(self.perm[i0:i1])
            if thetas:
                estimate = self._estimate(i0, thetas)
            theta = min(self.bound, estimate)
            self._add(*self._search(i0, i1, theta))
            thetas[(i0, i1)] = theta
            if len(self.pool_d) >= n:
                self.bound = min(self.bound, np.partition(self.pool_d, n - 1)[n - 1])
                self._crop(self.bound)
            if on_batch is not None:
                on_batch(i1)
        return thetas

    def _estimate(self, i0: int, thetas: dict[tuple[int, int], np.float32]) -> np.float32:
        """The estimated final cut after i0 queries: the score below which ESTIMATE_SAFETY
        times their expected share of n fell. The pool lacks the pairs above each batch's
        threshold, which can only raise this order statistic (the safe side); where the pool
        holds fewer pairs than that, the largest threshold so far (an earlier estimate)."""
        k = int(np.ceil(ESTIMATE_SAFETY * self.n * i0 / len(self.xq)))
        if k < len(self.pool_d):
            return np.partition(self.pool_d, k)[k]
        finite = [t for t in thetas.values() if np.isfinite(t)]
        return max(finite) if finite else np.float32(np.inf)

    def _check(self, thetas: dict[tuple[int, int], np.float32]) -> None:
        """Search again every batch whose threshold was below the final cut (until none is)."""
        while True:
            n = self.n
            # fewer than n pairs kept: every batch must be searched up to the proven bound
            cut = np.partition(self.pool_d, n - 1)[n - 1] if len(self.pool_d) >= n else self.bound
            redo = [b for b, theta in thetas.items() if theta < cut]
            if not redo:
                return
            self.stats.redone += len(redo)
            for i0, i1 in redo:
                theta = cut
                drop = np.isin(self.pool_q, self.perm[i0:i1])
                self.pool_q, self.pool_r, self.pool_d = self.pool_q[~drop], self.pool_r[~drop], self.pool_d[~drop]
                self._add(*self._search(i0, i1, theta))
                thetas[(i0, i1)] = theta

    def _add(self, q: np.ndarray, r: np.ndarray, d: np.ndarray) -> None:
        self.pool_q = np.concatenate((self.pool_q, q))
        self.pool_r = np.concatenate((self.pool_r, r))
        self.pool_d = np.concatenate((self.pool_d, d))

    def _crop(self, tau: np.float32) -> None:
        keep = self.pool_d <= tau
        self.pool_q, self.pool_r, self.pool_d = self.pool_q[keep], self.pool_r[keep], self.pool_d[keep]

    def _search(self, i0: int, i1: int, theta: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of queries perm[i0:i1] with exact score <= theta."""
        rows = self.perm[i0:i1]
        if not np.isfinite(theta):  # the batch has <= 2n pairs: all are candidates
            qi = np.repeat(rows, len(self.xb))
            ri = np.tile(np.arange(len(self.xb), dtype=np.int64), len(rows))
        else:
            local, ri = self._scanner().candidates(self.xq[rows], float(theta))
            qi = rows[local]
        dist = exact_distances(self.xq, self.xb, qi, ri, self.xq_norms, self.xb_norms)
        keep = dist <= theta
        kept = int(keep.sum())
        self.stats.candidates += len(dist)
        self.stats.kept += kept
        self.stats.batches.append((i1 - i0, float(theta), len(dist), kept))
        return qi[keep], ri[keep], dist[keep]

    def _scanner(self):
        """The first pass (built on first use: small searches never need it); int8 falls back
        to fp32 where it is not available (no onnxruntime, or a kernel that fails its check)."""
        from .prefilter import Scanner, default_threads

        if self.scanner is None:
            threads = self.threads or default_threads()
            for kind in dict.fromkeys((self.kind, "fp32")):
                try:
                    self.scanner = Scanner(self.xb, kind, threads)
                except RuntimeError:
                    continue
                if kind != self.kind:
                    self.stats.note = f"the {self.kind} first pass is not available here: {kind}"
                self.stats.method, self.stats.kernel = kind, self.scanner.kernel.name
                break
            else:
                raise RuntimeError("no first-pass kernel available")
        return self.scanner

    def _first_bound(self, rows: np.ndarray) -> tuple[np.float32, np.float32]:
        """A proven upper bound of the global n-th smallest score from the queries xq[rows]
        alone, and an estimate of the final cut from them.

        The K = 2n pairs of the batch with the smallest float32 matmul distance are distinct
        pairs, at least n of them, so the n-th smallest of their EXACT scores bounds the global
        n-th smallest from above, whatever the matmul's rounding. The estimate is the score
        below which ESTIMATE_SAFETY times the batch's expected share of n fell among them.
        Both are infinite when the batch has at most 2n pairs (all are then candidates).
        """
        m, nb, n, inf = len(rows), len(self.xb), self.n, np.float32(np.inf)
        if m * nb <= 2 * n:
            return inf, inf
        approx = self.xq[rows] @ self.xb.T  # m x nb float32 (32 x 1M: 128 MB, once)
        approx *= -2
        approx += self.xq_norms[rows][:, None]
        approx += self.xb_norms[None, :]
        flat = approx.ravel()
        k = min(flat.size, FIRST_BOUND_FACTOR * n)
        idx = np.flatnonzero(flat <= np.partition(flat, k - 1)[k - 1])
        del approx, flat
        dist = exact_distances(self.xq, self.xb, rows[idx // nb], idx % nb, self.xq_norms, self.xb_norms)
        share = min(len(dist) - 1, int(np.ceil(ESTIMATE_SAFETY * n * m / len(self.xq))))
        part = np.partition(dist, (share, n - 1))
        return part[n - 1], part[share]


def _faiss_top_pairs(
    xq: np.ndarray,
    xb: np.ndarray,
    n: int,
    threads: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Pairs:
    """The previous driver: faiss's range search with a radius that shrinks as the running
    n-th smallest distance improves (scores: faiss's BLAS distances, see the docstring)."""
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
