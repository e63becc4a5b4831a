"""`isc-qk inspect`: the error gallery of a result (thin wrapper of `inspection.stage`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..inspection import NEIGHBOURS, SHOW, THUMB_SIZE
from .app import app


@app.command("inspect")
def inspect_cmd(
    ground_truth: Annotated[Path, typer.Option("--ground-truth", help="CSV query_id,reference_id.")],
    query: Annotated[list[Path], typer.Option("--query", help="Query descriptor HDF5 (repeatable).")],
    reference: Annotated[list[Path], typer.Option("--reference", help="Reference descriptor HDF5 (repeatable).")],
    query_images: Annotated[Path, typer.Option("--query-images", help="The query images (thumbnails of those shown).")],
    reference_images: Annotated[Path, typer.Option("--reference-images", help="The reference images.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder: index.html, inspect.json, pr.png, thumbs/.")],
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Edit manifest of the queries (augment's manifest.csv): metrics per edit family and edit.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Name of the result [default: the query file's folder].")] = None,
    compare_query: Annotated[Optional[list[Path]], typer.Option(
        "--compare-query", help="A second result to compare: its query descriptors.")] = None,
    compare_reference: Annotated[Optional[list[Path]], typer.Option(
        "--compare-reference", help="The second result's reference descriptors.")] = None,
    compare_name: Annotated[Optional[str], typer.Option("--compare-name", help="Name of the second result.")] = None,
    show: Annotated[int, typer.Option("--show", help="False positives and missed copies shown per result.")] = SHOW,
    neighbours: Annotated[int, typer.Option("--neighbours", help="References shown above a missed copy.")] = NEIGHBOURS,
    max_results: Annotated[Optional[int], typer.Option(
        "--max-results", help="Global cap on pairs kept [default: 10 x queries searched], as evaluate-uap.")] = None,
    all_queries: Annotated[bool, typer.Option(
        "--all-queries", help="Also search queries absent from the ground truth, as evaluate-uap.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="faiss threads [default: faiss's own].")] = None,
    thumb_size: Annotated[int, typer.Option("--thumb-size", help="Thumbnail side in pixels.")] = THUMB_SIZE,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Thumbnail-decoding threads.")] = 2,
) -> None:
    """HTML error gallery: summary and PR curve, the highest-scoring false positives, the copies
    missed at the P90 operating point (and what was ranked above them), metrics per edit family,
    and two results side by side. Self-contained folder (open index.html; copy it anywhere)."""
    from ..inspection.stage import inspect_results
    from ..ui import out as stdout
    from ..ui import warn

    rep = inspect_results(ground_truth, query, reference, query_images, reference_images, out, manifest=manifest,
                          name=name, compare_query=compare_query, compare_reference=compare_reference,
                          compare_name=compare_name, show=show, neighbours=neighbours, max_results=max_results,
                          all_queries=all_queries, threads=threads, thumb_size=thumb_size, workers=workers)
    for r in rep.runs:
        for w in r.get("warnings", []):
            warn(f"{r['name']}: {w}")
    if rep.failures:
        warn(f"{len(rep.failures)} image(s) could not be shown (placeholder used): {rep.failures[0]}")
    for r in rep.runs:
        p90 = "not reached" if r["recall_at_p90"] is None else f"{r['recall_at_p90']:.4f}"
        stdout.print(f"{r['name']}: micro-AP {r['micro_ap']:.4f}, recall@P90 {p90}")
    stdout.print(f"wrote {rep.index}: {rep.false_positives_shown} false positives, missed copies "
                 f"{' / '.join(str(m) for m in rep.missed)}, {rep.thumbnails} thumbnails, in {rep.seconds:.1f} s")
