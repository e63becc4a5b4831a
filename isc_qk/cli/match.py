"""`isc-qk match`: are new images copies of the references? (thin wrapper of `matching.stage`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..matching import DEFAULT_PRECISION, DEFAULT_TOP_K
from .app import app
from .common import kv_table, warn_skipped


@app.command("match")
def match_cmd(
    reference: Annotated[list[Path], typer.Option("--reference", help="Reference descriptor HDF5 (repeatable).")],
    out: Annotated[Path, typer.Option("--out", help="CSV to write: query_id,reference_id,score,rank,decision "
                                                    "(+ OUT.json: where the threshold came from).")],
    images: Annotated[Optional[Path], typer.Option("--images", help="New images to describe and match.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="QK model folder that describes --images "
                                                                  "(the references: its K side).")] = None,
    pca: Annotated[Optional[Path], typer.Option("--pca", help="Instead of --model: a frozen descriptor's PCA "
                                                              "(gist-pca / descriptor-pca --train).")] = None,
    side: Annotated[str, typer.Option("--side", help="The model side that describes --images.")] = "q",
    query: Annotated[Optional[list[Path]], typer.Option("--query", help="Instead of --images: query descriptor "
                                                                        "HDF5 (repeatable).")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", help="Decide match when score >= T (score = minus the squared L2 distance, "
                            "like evaluate-uap's threshold@P90).")] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        "--calibration", help="evaluate-uap --json of labelled data: the threshold at --precision.")] = None,
    precision: Annotated[float, typer.Option("--precision", help="Precision to calibrate the threshold at.")] = DEFAULT_PRECISION,
    top_k: Annotated[int, typer.Option("--top-k", help="Nearest references kept per query (besides every pair "
                                                       "above the threshold).")] = DEFAULT_TOP_K,
    descriptors: Annotated[Optional[Path], typer.Option(
        "--descriptors", help="Where the new images' descriptors are kept [default: OUT_STEM.queries.h5].")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="faiss threads [default: faiss's own].")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Image-decoding threads.")] = 2,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Match new images (or descriptors) against reference descriptors with the evaluation's exact
    search: the top K of every query plus every pair above the threshold, with the decision."""
    from ..matching.stage import match

    rep = match(reference, out, query=query, images=images, model=model, pca=pca, side=side, threshold=threshold,
                calibration=calibration, precision=precision, top_k=top_k, descriptors=descriptors,
                threads=threads, workers=workers, progress=progress)
    warn_skipped(rep.unreadable)
    src = rep.threshold_source or {}
    where = ("none (no decisions)" if rep.threshold is None else
             f"{rep.threshold:.6g} ({'given' if src.get('kind') == 'given' else 'calibrated: ' + src['file']})")
    rows = {"matches": rep.out, "queries": rep.n_queries, "references": rep.n_references, "threshold": where}
    if src.get("kind") == "calibration":
        rows["calibration point"] = (f"precision {src['precision']:.4f} >= {src['precision_requested']:g}, "
                                     f"recall {src['recall']:.4f}")
    rows.update({"rows (top-k + above threshold)": rep.n_rows, "pairs decided match": rep.n_matches,
                 "queries with a match": rep.queries_with_match, "seconds": rep.seconds})
    kv_table("match", rows)
