"""Ranks and nearest references of the FEW queries a report shows, against ALL references.

The evaluation keeps a global top-N list, so a missed positive often has no rank in it at all;
what a researcher wants to see is where its true reference really stands ("rank 37 of 1M") and
what the descriptor put above it. That is a full scan of the references, but only for the
shown queries (a few hundred at most): float32 matmuls in reference chunks, and the
evaluation's exact score (`search.exact_distances`) for the pairs shown and for every pair
whose matmul distance is too close to a shown pair's to order it by the matmul alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..evaluation.prefilter import gamma
from ..evaluation.search import exact_distances, norms_sqr

CHUNK = 65536  # references per matmul (200 queries x 65536 x 4 B = 52 MB)


@dataclass
class Probe:
    """For each probed query row: its k nearest references (row, exact distance), and the
    rank (1 = nearest; ties by reference row) and exact distance of each target reference."""

    nearest: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    ranks: dict[tuple[int, int], int] = field(default_factory=dict)
    distances: dict[tuple[int, int], float] = field(default_factory=dict)


def probe(xq: np.ndarray, xb: np.ndarray, targets: dict[int, Iterable[int]], k: int) -> Probe:
    """Scan every reference for the query rows in `targets` (query row -> reference rows)."""
    out = Probe()
    rows = np.array(sorted(targets), dtype=np.int64)
    if not len(rows) or not len(xb):
        return out
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    sel = xq[rows]
    qn_all, bn = norms_sqr(xq), norms_sqr(xb)  # once: exact_distances would recompute them per call
    qn = qn_all[rows]
    exact = lambda qi, ri: exact_distances(xq, xb, qi, ri, qn_all, bn)  # noqa: E731
    d = xb.shape[1]
    # a bound on |matmul distance - exact score| (both within this of the real number)
    err = 4 * gamma(d + 2) * (qn.astype(np.float64) + float(bn.max()))
    pairs = [(i, int(r)) for i, q in enumerate(rows) for r in sorted(set(targets[int(q)]))]
    t_q = np.array([i for i, _ in pairs], dtype=np.int64)
    t_r = np.array([r for _, r in pairs], dtype=np.int64)
    t_d = exact(rows[t_q], t_r) if len(pairs) else np.zeros(0, np.float32)
    below = np.zeros(len(pairs), np.int64)  # references surely closer than the target
    close: list[list[int]] = [[] for _ in pairs]  # references the matmul cannot order against it
    k = min(k, len(xb))
    best_d = np.full((len(rows), k), np.inf, np.float64)
    best_r = np.zeros((len(rows), k), np.int64)
    for c0 in range(0, len(xb), CHUNK):
        c1 = min(len(xb), c0 + CHUNK)
        dist = sel @ xb[c0:c1].T
        dist *= -2
        dist += qn[:, None]
        dist += bn[None, c0:c1]
        for j, (i, _) in enumerate(pairs):
            row = dist[i]
            lo, hi = t_d[j] - err[i], t_d[j] + err[i]
            below[j] += int((row < lo).sum())
            band = np.flatnonzero((row >= lo) & (row <= hi))
            close[j].extend((band + c0).tolist())
        if k:
            cand_d = np.concatenate([best_d, dist.astype(np.float64)], axis=1)
            cand_r = np.concatenate([best_r, np.broadcast_to(np.arange(c0, c1), dist.shape)], axis=1)
            keep = np.argpartition(cand_d, k - 1, axis=1)[:, :k] if cand_d.shape[1] > k else np.argsort(cand_d, axis=1)
            best_d = np.take_along_axis(cand_d, keep, axis=1)
            best_r = np.take_along_axis(cand_r, keep, axis=1)
    for j, (i, r) in enumerate(pairs):
        band = np.array(close[j], dtype=np.int64)
        if len(band):  # order the near-ties by the exact score, then by reference row
            bd = exact(np.full(len(band), rows[i]), band)
            below[j] += int(((bd < t_d[j]) | ((bd == t_d[j]) & (band < r))).sum())
        key = (int(rows[i]), r)
        out.ranks[key] = int(below[j]) + 1
        out.distances[key] = float(t_d[j])
    for i, q in enumerate(rows):
        if not k:
            continue
        cand = best_r[i]
        dist = exact(np.full(len(cand), q), cand)
        order = np.lexsort((cand, dist))
        out.nearest[int(q)] = [(int(cand[o]), float(dist[o])) for o in order]
    return out
