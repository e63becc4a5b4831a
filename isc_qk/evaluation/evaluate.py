"""ISC2021 descriptor-track evaluation: search, score with the exact micro-AP rule, report.

`evaluate(query, reference, gt)` is the one entry point (the CLI, the pipeline and the
normalisation experiments call it). Defaults follow the leaderboard:

* only queries listed in the ground truth are searched (`all_queries=True` also searches the
  others, which can only add false positives: that is what the official
  ``compute_metrics.py --track2`` does, as it searches every query of the file);
* the candidates are the ``10 x n_queries_searched`` globally closest pairs (`max_results`
  overrides the cap; the official script's default is a fixed 500,000 = 10 x 50k dev queries);
* `knn=K` keeps K neighbours per query instead (not the ISC rule, for comparison).

Ground-truth pairs whose query or reference has no descriptor still count as positives that
were not found (with a warning): leaving them out would inflate the score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..formats import Descriptors, GroundTruth
from ..ui import ticker
from .metrics import MatchMetrics, metrics_from_arrays
from .search import Pairs, global_top_pairs, knn_pairs

RESULTS_PER_QUERY = 10  # the leaderboard's cap: 10 x number of queries
PAIR_BYTES = 64  # memory per kept pair while searching and scoring (indices, distances, sort keys, copies)


@dataclass
class EvalResult:
    """The evaluation numbers (None where P90 is never reached) and the PR curve."""

    micro_ap: float
    recall_at_p90: float | None
    threshold_at_p90: float | None  # a score, i.e. minus the squared L2 distance
    recall_at_rank1: float
    recall_at_rank10: float
    n_predictions: int
    n_positives: int
    n_true_positives: int
    n_queries_searched: int
    n_references: int
    max_results: int | None
    knn: int | None
    all_queries: bool
    warnings: list[str] = field(default_factory=list)
    precisions: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    recalls: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    # the search alone (no reading, no scoring): what benchmarks compare with a bare matmul
    search_wall_s: float | None = None
    search_cpu_s: float | None = None  # all threads of this process


def _searched_rows(query: Descriptors, gt: GroundTruth, all_queries: bool) -> np.ndarray:
    if all_queries:
        return np.arange(len(query.ids))
    listed = set(gt.query_ids)
    return np.array([i for i, q in enumerate(query.ids) if q in listed], dtype=np.int64)


def _missing_warnings(query: Descriptors, reference: Descriptors, gt: GroundTruth) -> list[str]:
    qset, rset = set(query.ids), set(reference.ids)
    out = []
    missing_q = [q for q in gt.query_ids if q not in qset]
    if missing_q:
        lost = sum(1 for q, _ in gt.pairs if q not in qset)
        out.append(
            f"{len(missing_q)} ground-truth queries have no descriptor (e.g. {missing_q[0]}); "
            f"their {lost} pairs count as not found"
        )
    missing_r = sorted({r for q, r in gt.pairs if r not in rset})
    if missing_r:
        lost = sum(1 for _, r in gt.pairs if r not in rset)
        out.append(
            f"{len(missing_r)} ground-truth references have no descriptor (e.g. {missing_r[0]}); "
            f"their {lost} pairs count as not found"
        )
    return out


def evaluate(
    query: Descriptors,
    reference: Descriptors,
    gt: GroundTruth,
    max_results: int | None = None,
    knn: int | None = None,
    all_queries: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """Search `query` against `reference` (exact L2) and score the result against `gt`."""
    if max_results is not None and knn is not None:
        raise UserError("--max-results and --knn are exclusive (kNN keeps k per query, uncapped)")
    if max_results is not None and max_results < 1:
        raise UserError(f"--max-results must be >= 1, got {max_results}")
    if knn is not None and knn < 1:
        raise UserError(f"--knn must be >= 1, got {knn}")
    if query.dim != reference.dim:
        raise UserError(f"query dimension {query.dim} differs from reference dimension {reference.dim}")
    if gt.n_positives == 0:
        raise UserError("the ground truth has no matched pair: micro-AP is undefined")
    if not set(gt.query_ids) & set(query.ids):
        raise UserError(
            f"none of the {len(gt.query_ids)} ground-truth queries (e.g. {gt.query_ids[0]}) "
            f"has a descriptor (query ids look like {query.ids[0]}): wrong files?"
        )
    warnings = _missing_warnings(query, reference, gt)

    rows = _searched_rows(query, gt, all_queries)
    xq = query.vectors[rows]
    cap = None
    from ..stages.resources import check_memory

    kept = len(rows) * min(knn, len(reference.ids)) if knn is not None else \
        min(max_results if max_results is not None else RESULTS_PER_QUERY * len(rows), len(rows) * len(reference.ids))
    check_memory(PAIR_BYTES * kept, f"keeping {kept:,} (query, reference) pairs", "lower --max-results or --knn")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if knn is not None:
        pairs = knn_pairs(xq, reference.vectors, knn, threads=threads)
    else:
        cap = max_results if max_results is not None else RESULTS_PER_QUERY * len(rows)
        pairs = _run_global(xq, reference.vectors, cap, threads, progress)
    search_wall, search_cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    metrics = _score(pairs, rows, query, reference, gt)
    return EvalResult(
        micro_ap=metrics.micro_ap,
        recall_at_p90=metrics.recall_at_p90,
        threshold_at_p90=metrics.threshold_at_p90,
        recall_at_rank1=metrics.recall_at_rank1,
        recall_at_rank10=metrics.recall_at_rank10,
        n_predictions=metrics.n_predictions,
        n_positives=metrics.n_positives,
        n_true_positives=metrics.n_true_positives,
        n_queries_searched=int(len(rows)),
        n_references=len(reference.ids),
        max_results=cap,
        knn=knn,
        all_queries=all_queries,
        warnings=warnings,
        precisions=metrics.precisions,
        recalls=metrics.recalls,
        thresholds=metrics.thresholds,
        search_wall_s=search_wall,
        search_cpu_s=search_cpu,
    )


def _run_global(xq: np.ndarray, xb: np.ndarray, cap: int, threads: int | None, progress: bool) -> Pairs:
    done = 0

    with ticker(progress, len(xq), "searching", transient=True) as tick:
        def on_batch(n: int) -> None:
            nonlocal done
            tick(n - done)
            done = n

        return global_top_pairs(xq, xb, cap, threads=threads, on_batch=on_batch)


def _score(
    pairs: Pairs, rows: np.ndarray, query: Descriptors, reference: Descriptors, gt: GroundTruth
) -> MatchMetrics:
    """Label the retrieved pairs with integer keys (query row * n_refs + ref row)."""
    nb = len(reference.ids)
    q_row = {q: i for i, q in enumerate(query.ids)}
    r_row = {r: i for i, r in enumerate(reference.ids)}
    gt_keys = np.array(
        [q_row[q] * nb + r_row[r] if q in q_row and r in r_row else -1 for q, r in gt.pairs], dtype=np.int64
    )
    pred_q = rows[pairs.query] if len(pairs) else np.zeros(0, np.int64)
    pred_keys = pred_q * nb + pairs.reference
    order = np.argsort(pred_keys, kind="stable")
    sorted_keys = pred_keys[order]
    if len(sorted_keys) > 1 and (sorted_keys[1:] == sorted_keys[:-1]).any():
        raise UserError("the search returned a duplicate (query, reference) pair")
    pos = np.searchsorted(sorted_keys, gt_keys)
    pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    hit = (gt_keys >= 0) & (len(sorted_keys) > 0)
    if len(sorted_keys):
        hit &= sorted_keys[pos] == gt_keys
    match_index = np.where(hit, order[pos] if len(order) else -1, -1)
    is_pos = np.zeros(len(pairs), dtype=bool)
    is_pos[match_index[match_index >= 0]] = True
    return metrics_from_arrays(pred_q, pairs.scores, is_pos, match_index, gt.n_positives)
