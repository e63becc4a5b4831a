"""Which (query, reference) pairs `match` reports: the k nearest references of every query,
plus EVERY pair at or above the threshold, each with the evaluation's exact score.

* every pair above the threshold: `evaluation.search.pairs_within`, the evaluation's first
  pass with its proven bound and the exact score, so no pair that scores above the threshold
  is left out and the score is the one the threshold was calibrated on;
* the k nearest: faiss's kNN (the evaluation's ``--knn``), re-scored with the exact score.

Memory: the references once (plus what the evaluation's search holds), never a queries x
references matrix; the output holds k + (pairs above the threshold) rows per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.search import exact_distances, knn_pairs, pairs_within


@dataclass
class RankedPairs:
    """Pairs grouped by query row, best first: query / reference rows, squared distance, rank (1 = best)."""

    query: np.ndarray
    reference: np.ndarray
    distance: np.ndarray  # float32, exact
    rank: np.ndarray

    def __len__(self) -> int:
        return len(self.distance)

    @property
    def scores(self) -> np.ndarray:
        return -self.distance.astype(np.float64)


def match_pairs(xq: np.ndarray, xb: np.ndarray, top_k: int, max_distance: float | None,
                threads: int | None = None) -> RankedPairs:
    """Top `top_k` references of every query, plus every pair with distance <= `max_distance`.

    The union of the two is, for each query, a prefix of its full ranking (a pair above the
    threshold has every closer reference above it too), so `rank` is the rank among ALL
    references; ties are broken by reference row.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    qs, rs, ds = [], [], []
    if top_k > 0:
        near = knn_pairs(xq, xb, top_k, threads=threads)
        qs.append(near.query)
        rs.append(near.reference)
        ds.append(exact_distances(xq, xb, near.query, near.reference))
    if max_distance is not None:
        within = pairs_within(xq, xb, max_distance, threads=threads)
        qs.append(within.query)
        rs.append(within.reference)
        ds.append(within.distance)
    if not qs:
        empty = np.zeros(0, np.int64)
        return RankedPairs(empty, empty, np.zeros(0, np.float32), empty)
    q, r, d = np.concatenate(qs), np.concatenate(rs), np.concatenate(ds)
    _, first = np.unique(q * len(xb) + r, return_index=True)  # a pair found by both: once
    q, r, d = q[first], r[first], d[first]
    order = np.lexsort((r, d, q))
    q, r, d = q[order], r[order], d[order]
    starts = np.r_[0, np.flatnonzero(q[1:] != q[:-1]) + 1] if len(q) else np.zeros(0, np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(q)]))
    rank = np.arange(len(q)) - group_start + 1
    return RankedPairs(q, r, d, rank.astype(np.int64))
