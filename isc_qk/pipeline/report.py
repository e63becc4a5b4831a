"""The pipeline's results table, three ways: ``results.json`` (every number, for scripts),
``results.md`` (the table) and ``results.png`` (micro-AP by phase, PR curves), plus the
rich table printed at the end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..formats.results import ResultRow, Results, fmt_p90, write_markdown
from ..plots import plot_results


def curve_of(res) -> dict:
    """A PR curve thinned to <= 400 points (the plot does not need every prediction)."""
    p, r = np.asarray(res.precisions), np.asarray(res.recalls)
    idx = np.unique(np.linspace(0, len(p) - 1, num=min(len(p), 400)).astype(int)) if len(p) else []
    return {"precision": [float(p[i]) for i in idx], "recall": [float(r[i]) for i in idx]}


def rich_table(rows: list[ResultRow], title: str = "Results"):
    from rich.table import Table

    t = Table(title=title)
    for col in ("method", "phase", "norm.", "micro-AP", "R@P90", "R@1", "passes"):
        t.add_column(col, justify="right" if col in ("micro-AP", "R@P90", "R@1", "passes") else "left")
    for r in rows:
        t.add_row(r.method, r.phase, r.normalization, f"{r.micro_ap:.4f}", fmt_p90(r.recall_at_p90),
                  f"{r.recall_at_rank1:.4f}", f"{r.image_passes:g}")
    return t


def write_all(work: str | os.PathLike, results: Results, header: str = "") -> None:
    work = Path(work)
    write_markdown(work / "results.md", results.rows, header)
    plot_results(work / "results.png", results.rows)
    results.save()
