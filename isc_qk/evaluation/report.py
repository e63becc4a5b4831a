"""The evaluation's outputs: the rich table and the JSON for scripts (the PR plot: `plots`)."""

from __future__ import annotations

import numpy as np

from .evaluate import EvalResult


def to_json(res: EvalResult, timings: bool = False) -> dict:
    """The numbers of the table as a JSON-ready dict (null where P90 is not reached); with
    `timings`, also the search's own seconds (off by default: the file stays a pure function
    of its inputs)."""
    out = {
        "micro_ap": res.micro_ap,
        "recall_at_p90": res.recall_at_p90,
        "threshold_at_p90": res.threshold_at_p90,
        "p90_reached": res.recall_at_p90 is not None,
        "recall_at_rank1": res.recall_at_rank1,
        "recall_at_rank10": res.recall_at_rank10,
        "n_predictions": res.n_predictions,
        "n_positives": res.n_positives,
        "n_true_positives": res.n_true_positives,
        "n_queries_searched": res.n_queries_searched,
        "n_references": res.n_references,
        "max_results": res.max_results,
        "knn": res.knn,
        "all_queries": res.all_queries,
        "warnings": list(res.warnings),
        "pr_curve": pr_curve_points(res),
    }
    if timings:
        out["search_seconds"] = {"wall": res.search_wall_s, "cpu": res.search_cpu_s}
    return out


def result_table(res: EvalResult, title: str = "ISC2021 descriptor-track evaluation"):
    """A rich table of the headline numbers."""
    from rich.table import Table

    rule = f"kNN k={res.knn}" if res.knn is not None else f"global top {res.max_results:,}"
    t = Table(title=title, caption=f"{res.n_queries_searched:,} queries x {res.n_references:,} references, {rule}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("micro-AP", f"{res.micro_ap:.5f}")
    if res.recall_at_p90 is None:
        t.add_row("recall@P90", "not reached")
    else:
        t.add_row("recall@P90", f"{res.recall_at_p90:.5f}")
        t.add_row("threshold@P90 (score = -L2²)", f"{res.threshold_at_p90:g}")
    t.add_row("recall@rank1", f"{res.recall_at_rank1:.5f}")
    t.add_row("recall@rank10", f"{res.recall_at_rank10:.5f}")
    t.add_row("predictions kept", f"{res.n_predictions:,}")
    t.add_row("positives (found)", f"{res.n_positives:,} ({res.n_true_positives:,})")
    return t


def pr_curve_points(res: EvalResult) -> dict:
    """The PR curve at every true positive of the list (where recall steps up), with the score
    there: enough to find the threshold at ANY precision (`isc-qk match --calibration`), since
    the largest recall at precision >= p is always reached at a true positive (the FPs that
    follow one only lower the precision). At most one point per ground-truth pair."""
    p, r, t = (np.asarray(a, dtype=np.float64) for a in (res.precisions, res.recalls, res.thresholds))
    step = np.flatnonzero(np.diff(r, prepend=0.0) > 0)
    return {"precision": p[step].tolist(), "recall": r[step].tolist(), "threshold": t[step].tolist()}
