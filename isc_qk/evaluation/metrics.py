"""The exact ISC2021 micro-AP rule and its secondary metrics, in one place.

Everything here works on flat arrays of *predictions* (one row per (query, reference) pair
that the search kept) and is independent of how they were found, so hand-made cases can be
checked against hand-derived answers.

The rule (the official ``isc2021`` evaluator, re-implemented from its description):

* Predictions are sorted by DESCENDING score; among EQUAL scores the false positives come
  first. This worst-case order means a constant score cannot buy a better AP.
* After the i-th prediction: ``precision_i = tp_i / i`` and ``recall_i = tp_i / P`` where P is
  the number of ground-truth pairs, *all of them*, also those whose query was never searched
  or whose pair was never retrieved.
* ``AP = sum_i (recall_i - recall_{i-1}) * precision_i`` with ``recall_0 = 0``: a plain,
  non-interpolated sum, i.e. the mean over the P ground-truth pairs of the precision at which
  each was retrieved (0 for those never retrieved).
* Recall@P90: the largest recall among list positions whose precision is >= 0.9, with the
  score of the first position reaching it (the threshold); ``None`` when no position reaches it.
* Rank of a ground-truth pair: the number of predictions *of the same query* whose score is
  >= the true match's score, minus one (ties count against); never retrieved = infinite.
  Recall@rank-k = fraction of ALL ground-truth pairs with rank < k.

Worked example (P = 3 ground-truth pairs, four predictions)::

    scores      = [0.9, 0.8, 0.8, 0.1]
    is_positive = [  1,   1,   0,   1]
    worst-case order: 0.9 (tp), 0.8 (FP first), 0.8 (tp), 0.1 (tp)
    precisions  = [1/1, 1/2, 2/3, 3/4]; recalls = [1/3, 1/3, 2/3, 3/3]
    AP = 1/3 * 1 + 0 * 1/2 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36 = 0.8055...
    recall@P90 = 1/3 at threshold 0.9

    >>> round(average_precision([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 1], 3), 4)
    0.8056
    >>> recall_at_precision([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 1], 3, 0.9)
    (0.3333333333333333, 0.9)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

NOT_FOUND = np.inf  # rank of a ground-truth pair that was never retrieved


def _as_arrays(scores, is_positive) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(is_positive).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    if np.isnan(s).any():
        raise UserError("prediction scores contain NaN")
    return s, y


def worst_case_order(scores, is_positive) -> np.ndarray:
    """Indices sorting predictions by descending score, false positives first among ties."""
    s, y = _as_arrays(scores, is_positive)
    # lexsort sorts by the LAST key first: primary = -score ascending, secondary = label
    # ascending (False before True). Stable, so equal (score, label) keep their input order.
    return np.lexsort((y, -s))


def precision_recall(scores, is_positive, n_positives: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and score after each position of the worst-case sorted list."""
    s, y = _as_arrays(scores, is_positive)
    _check_n_positives(y, n_positives)
    order = worst_case_order(s, y)
    y, s = y[order], s[order]
    tp = np.cumsum(y)
    precisions = tp / np.arange(1, len(y) + 1)
    recalls = tp / n_positives
    return precisions, recalls, s


def _check_n_positives(y: np.ndarray, n_positives: int) -> None:
    if n_positives <= 0:
        raise UserError("the ground truth has no matched pair: micro-AP is undefined")
    if int(y.sum()) > n_positives:
        raise ValueError(f"{int(y.sum())} true positives but only {n_positives} ground-truth pairs")


def average_precision(scores, is_positive, n_positives: int, *, curve=None) -> float:
    """Micro-AP: sum over list positions of (recall_i - recall_{i-1}) * precision_i.

    `n_positives` is the number of ground-truth pairs (not only the retrieved ones), so a pair
    that was never retrieved contributes 0 and lowers the AP. `curve`: the
    (precisions, recalls, thresholds) of these same predictions when the caller already has
    them (`metrics_from_arrays`), so the list is sorted once.
    """
    precisions, recalls, _ = curve if curve is not None else precision_recall(scores, is_positive, n_positives)
    if len(recalls) == 0:
        return 0.0
    steps = np.diff(recalls, prepend=0.0)
    return float((steps * precisions).sum())


def recall_at_precision(
    scores, is_positive, n_positives: int, min_precision: float = 0.9
) -> tuple[float | None, float | None]:
    """(largest recall at precision >= min_precision, its score threshold), or (None, None).

    The threshold is the score at the first list position where that recall is reached, so
    "keep predictions with score >= threshold" gives this operating point.
    """
    return operating_point(*precision_recall(scores, is_positive, n_positives), min_precision)


def operating_point(
    precisions: np.ndarray, recalls: np.ndarray, thresholds: np.ndarray, min_precision: float
) -> tuple[float | None, float | None]:
    """`recall_at_precision` on an already computed PR curve."""
    ok = np.flatnonzero(precisions >= min_precision)
    if ok.size == 0:
        return None, None
    best = ok[np.argmax(recalls[ok])]  # argmax: first position with the largest recall
    return float(recalls[best]), float(thresholds[best])


def match_ranks(pred_query: np.ndarray, scores: np.ndarray, match_index: np.ndarray) -> np.ndarray:
    """Rank of each ground-truth pair among the predictions of its query (inf if not retrieved).

    `pred_query` (int codes) and `scores` describe the predictions; `match_index[g]` is the
    prediction index of ground-truth pair g, or -1 when the pair was not retrieved. Rank =
    number of that query's predictions with score >= the match's score, minus one.
    """
    pred_query = np.asarray(pred_query).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    match_index = np.asarray(match_index, dtype=np.int64).ravel()
    ranks = np.full(match_index.shape, NOT_FOUND)
    found = match_index >= 0
    if not found.any():
        return ranks
    # Sort predictions by (query, descending score). Within a query, the predictions with
    # score >= s are a prefix ending at the last element of s's tie run.
    order = np.lexsort((-scores, pred_query))
    q, s = pred_query[order], scores[order]
    n = len(q)
    new_group = np.r_[True, q[1:] != q[:-1]]
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    run_id = np.cumsum(new_run) - 1
    run_end = np.r_[np.flatnonzero(new_run)[1:], n] - 1  # last index of each run
    count_ge = run_end[run_id] - group_start + 1  # per sorted position
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    ranks[found] = count_ge[position[match_index[found]]] - 1
    return ranks


def recall_at_rank(ranks: np.ndarray, k: int) -> float:
    """Fraction of ground-truth pairs whose rank is < k (rank 0 = first of its query)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float((ranks < k).mean()) if ranks.size else 0.0


@dataclass
class MatchMetrics:
    """Every number of the ISC2021 evaluation, plus the PR curve for plotting."""

    micro_ap: float
    recall_at_p90: float | None
    threshold_at_p90: float | None
    recall_at_rank1: float
    recall_at_rank10: float
    n_predictions: int
    n_positives: int
    n_true_positives: int
    precisions: np.ndarray = field(repr=False)
    recalls: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)


def metrics_from_arrays(
    pred_query_code: np.ndarray,
    scores: np.ndarray,
    is_positive: np.ndarray,
    match_index: np.ndarray,
    n_positives: int,
) -> MatchMetrics:
    """All metrics from integer-coded predictions (the fast path used by `evaluate`)."""
    p, r, t = precision_recall(scores, is_positive, n_positives)
    ap = average_precision(scores, is_positive, n_positives, curve=(p, r, t))
    r90, t90 = operating_point(p, r, t, 0.9)
    ranks = match_ranks(pred_query_code, scores, match_index)
    return MatchMetrics(
        micro_ap=ap,
        recall_at_p90=r90,
        threshold_at_p90=t90,
        recall_at_rank1=recall_at_rank(ranks, 1),
        recall_at_rank10=recall_at_rank(ranks, 10),
        n_predictions=int(len(scores)),
        n_positives=int(n_positives),
        n_true_positives=int(np.asarray(is_positive).sum()),
        precisions=p,
        recalls=r,
        thresholds=t,
    )
