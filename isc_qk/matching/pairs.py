"""Which (query, reference) pairs `match` reports: the k nearest references of every query,
plus EVERY pair at or above the threshold, each with the evaluation's exact score.

Both come from ONE pass of the evaluation's first pass with a proven bound
(`evaluation.search.nearest_and_within`, per-query thresholds), then the exact score decides:
no neighbour and no pair above the threshold is missed, ties are broken by reference row, and
the score is the one the threshold was calibrated on. Memory: the references once (plus what
the evaluation's search holds), never a queries x references matrix; the output holds
k + (pairs above the threshold) rows per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.search import nearest_and_within


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

    For each query the pairs kept are a prefix of its full ranking (a pair above the threshold
    has every closer reference above it too), so `rank` is the rank among ALL references.
    """
    p = nearest_and_within(xq, xb, top_k, max_distance, threads=threads)
    q = p.query
    starts = np.r_[0, np.flatnonzero(q[1:] != q[:-1]) + 1] if len(q) else np.zeros(0, np.int64)
    rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)])) + 1
    return RankedPairs(q, p.reference, p.distance, rank.astype(np.int64))
