"""Commands of the 'evaluate' area: `submit` and `evaluate-uap` (thin wrappers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from .app import app


@app.command("submit")
def submit(
    query: Annotated[list[Path], typer.Option("--query", help="Query descriptor HDF5 (vectors + image_names); repeatable.")],
    reference: Annotated[
        list[Path], typer.Option("--reference", help="Reference descriptor HDF5; repeatable.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Submission HDF5 to write.")],
) -> None:
    """Write the official descriptor-track submission (refuses d > 256, NaN, duplicates...)."""
    from ..formats import read_descriptors, write_submission
    from ..stages.guard import check_paths, check_replaceable, is_submission
    from ..ui import out as stdout

    check_paths({"--out": out}, {**{f"--query {p}": p for p in query}, **{f"--reference {p}": p for p in reference}})
    check_replaceable(out, "--out", is_submission, "submission file")
    q, r = read_descriptors(query), read_descriptors(reference)
    write_submission(out, q, r)
    stdout.print(f"wrote {out}: {len(q.ids):,} queries, {len(r.ids):,} references, {q.dim}-d")


@app.command("evaluate-uap")
def evaluate_uap(
    ground_truth: Annotated[Path, typer.Option("--ground-truth", help="CSV query_id,reference_id.")],
    submission: Annotated[Optional[Path], typer.Option("--submission", help="Submission HDF5.")] = None,
    query: Annotated[
        Optional[list[Path]], typer.Option("--query", help="Query descriptor HDF5 (instead of --submission).")
    ] = None,
    reference: Annotated[
        Optional[list[Path]], typer.Option("--reference", help="Reference descriptor HDF5 (with --query).")
    ] = None,
    max_results: Annotated[
        Optional[int], typer.Option("--max-results", help="Global cap on pairs kept [default: 10 x queries searched].")
    ] = None,
    knn: Annotated[Optional[int], typer.Option("--knn", help="Keep K neighbours per query instead (not the ISC rule).")] = None,
    all_queries: Annotated[
        bool, typer.Option("--all-queries", help="Also search queries absent from the ground truth (official --track2).")
    ] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the numbers as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the precision-recall curve PNG here.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Threads of the search (its first-pass matmul and faiss) (default: all cores).")] = None,
    timings: Annotated[
        bool, typer.Option("--timings", help="Add the search's own wall/CPU seconds to the JSON (benchmarks).")
    ] = False,
) -> None:
    """Exact ISC2021 micro-AP (global top-N by squared L2), recall@P90 and recall@rank."""
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import result_table, to_json
    from ..formats import read_descriptors, read_ground_truth, read_submission, write_json
    from ..plots import plot_pr
    from ..stages.guard import check_paths, check_replaceable, is_metrics_json, is_png
    from ..ui import out, warn

    inputs = {"--ground-truth": ground_truth, "--submission": submission,
              **{f"--query {p}": p for p in query or []}, **{f"--reference {p}": p for p in reference or []}}
    check_paths({"--json": json_path, "--plot": plot}, inputs)
    check_replaceable(json_path, "--json", is_metrics_json, "metrics JSON")
    check_replaceable(plot, "--plot", is_png, "PNG plot")
    if submission is not None and (query or reference):
        raise UserError("give either --submission or --query/--reference, not both")
    if submission is None and not (query and reference):
        raise UserError("give --submission, or both --query and --reference")
    gt = read_ground_truth(ground_truth)
    if submission is not None:
        sub = read_submission(submission)
        q, r = sub.query, sub.reference
    else:
        q, r = read_descriptors(query), read_descriptors(reference)
    res = evaluate(q, r, gt, max_results=max_results, knn=knn, all_queries=all_queries, threads=threads, progress=True)
    for w in res.warnings:
        warn(w)
    out.print(result_table(res))
    new = [p for p in (json_path, plot) if p is not None and not p.exists()]
    try:  # both outputs or neither: a failed plot (a full disk) takes this run's JSON with it
        if json_path is not None:
            write_json(json_path, to_json(res, timings=timings))
        if plot is not None:
            plot_pr(res, plot)
    except BaseException:
        for p in new:
            p.unlink(missing_ok=True)
        raise
