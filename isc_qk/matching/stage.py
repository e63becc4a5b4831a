"""`isc-qk match`: are these new images copies of my references?

Descriptors of the new images (described here with a QK model's query side, or a frozen
descriptor's PCA, or given as a file), the evaluation's exact search against the reference
descriptors (`pairs.match_pairs`), and one CSV row per (query, reference) pair kept: the top k
of every query plus every pair at or above the threshold, with the decision. The threshold is a
number, or read from an `evaluate-uap` JSON of labelled data at a requested precision
(`calibration`); the JSON beside the CSV says which.

Outputs are checked before any work like every stage's (never an input, never a file that an
earlier `match` did not write), written atomically, one writer at a time. The new images'
descriptors are kept (``--descriptors``, default beside the CSV): describing is the slow part,
and a re-run (another threshold, more references) finds them done.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UserError
from ..formats.atomic import read_json
from ..formats.descriptors import Descriptors, read_descriptors
from ..formats.matches import is_matches_csv, is_matches_json, matches_sidecar, write_matches
from ..stages import guard, lock
from ..ui import console
from . import DEFAULT_PRECISION, DEFAULT_TOP_K
from .calibration import Threshold, given_threshold, threshold_from_metrics
from .pairs import match_pairs



@dataclass
class MatchReport:
    out: str
    threshold: float | None
    threshold_source: dict | None
    top_k: int
    n_queries: int
    n_references: int
    n_rows: int
    n_matches: int
    queries_with_match: int
    descriptors: str | None = None  # the new images' descriptors, when described here
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def default_descriptors_path(out: str | os.PathLike) -> Path:
    """``matches.csv`` -> ``matches.queries.h5`` beside it."""
    p = Path(out)
    return p.with_name(p.stem + ".queries.h5")


def resolve_threshold(threshold: float | None, calibration: str | os.PathLike | None,
                      precision: float = DEFAULT_PRECISION) -> Threshold | None:
    """--threshold T, or --calibration EVAL.json [--precision P], or neither (no decisions)."""
    if threshold is not None and calibration is not None:
        raise UserError("give --threshold or --calibration, not both")
    if calibration is not None:
        return threshold_from_metrics(calibration, precision)
    if threshold is not None:
        return given_threshold(threshold)
    return None


def match(
    reference: str | os.PathLike | list,
    out: str | os.PathLike,
    query: str | os.PathLike | list | None = None,
    images: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    pca: str | os.PathLike | None = None,
    side: str = "q",
    threshold: float | None = None,
    calibration: str | os.PathLike | None = None,
    precision: float = DEFAULT_PRECISION,
    top_k: int = DEFAULT_TOP_K,
    descriptors: str | os.PathLike | None = None,
    threads: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> MatchReport:
    """Match new images (`images` with `model` or `pca`, or descriptors `query`) against the
    reference descriptors; write the pairs CSV `out` and its JSON. See the module docstring."""
    t0 = time.perf_counter()
    refs = [reference] if isinstance(reference, (str, os.PathLike)) else list(reference)
    queries = None if query is None else ([query] if isinstance(query, (str, os.PathLike)) else list(query))
    if (queries is None) == (images is None):
        raise UserError("give either --images DIR (with --model or --pca) or --query Q.h5")
    if images is not None and (model is None) == (pca is None):
        raise UserError("--images needs --model MODEL_DIR (a QK model) or --pca PCA (a frozen descriptor's PCA)")
    if queries is not None and (model is not None or pca is not None):
        raise UserError("--model / --pca describe --images; with --query the descriptors are given")
    if side not in ("q", "k"):
        raise UserError(f"--side must be q or k, not {side!r}")
    if top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {top_k}")
    thr = resolve_threshold(threshold, calibration, precision)
    if top_k == 0 and thr is None:
        raise UserError("--top-k 0 keeps only the pairs above a threshold: give --threshold or --calibration")
    out = Path(out)
    side_json = matches_sidecar(out)
    desc_path = Path(descriptors) if descriptors is not None else (default_descriptors_path(out) if images else None)
    inputs = {**{f"--reference {p}": p for p in refs}, **{f"--query {p}": p for p in queries or []},
              "--images": images, "--model": model, "--pca": pca, "--calibration": calibration}
    guard.check_paths({"--out": out, "--out (its JSON)": side_json, "--descriptors": desc_path}, inputs)
    guard.check_replaceable(out, "--out", is_matches_csv, "match CSV")
    guard.check_replaceable(side_json, "--out (its JSON)", is_matches_json, "match JSON")
    if desc_path is not None and desc_path.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"--descriptors {desc_path}: must be an .h5 file")
    out.parent.mkdir(parents=True, exist_ok=True)
    with lock.exclusive(out.with_name(f".{out.name}.lock"), str(out)):
        ref = read_descriptors(refs)
        unreadable: list[str] = []
        if images is not None:
            _check_same_model(model, refs, side)
            q, unreadable = _describe(images, model, pca, side, desc_path, workers, progress)
        else:
            q = read_descriptors(queries)
        if q.dim != ref.dim:
            raise UserError(f"query descriptors are {q.dim}-d, references {ref.dim}-d: not made by the same model")
        if thr is not None and progress:
            console.print(f"threshold {thr.describe()}", highlight=False)
        q = q.sorted()
        pairs = match_pairs(q.vectors, ref.vectors, top_k, None if thr is None else thr.max_distance, threads)
        scores = pairs.scores
        decided = np.full(len(pairs), -1, np.int64) if thr is None else (scores >= thr.score).astype(np.int64)
        qids, rids = np.array(q.ids, dtype=object), np.array(ref.ids, dtype=object)
        n_match = int((decided == 1).sum())
        rep = MatchReport(
            out=str(out), threshold=None if thr is None else thr.score, threshold_source=None if thr is None else thr.source,
            top_k=top_k, n_queries=len(q.ids), n_references=len(ref.ids), n_rows=len(pairs), n_matches=n_match,
            queries_with_match=int(len(np.unique(pairs.query[decided == 1]))),
            descriptors=None if desc_path is None else str(desc_path), unreadable=unreadable,
        )
        meta = {**rep.to_dict(), "score": "minus the squared L2 distance (the evaluation's score); match: score >= threshold",
                "reference": [os.path.abspath(p) for p in refs],
                "query": [os.path.abspath(p) for p in queries] if queries else None,
                "images": None if images is None else os.path.abspath(images),
                "model": None if model is None else os.path.abspath(model), "pca": None if pca is None else os.path.abspath(pca),
                "side": side if images is not None else None, "isc_qk_version": __version__}
        meta.pop("seconds")
        write_matches(out, qids[pairs.query], rids[pairs.reference], scores, pairs.rank, decided, meta)
    rep.seconds = round(time.perf_counter() - t0, 3)
    return rep


def _describe(images, model, pca, side: str, out_h5: Path, workers: int, progress: bool) -> tuple[Descriptors, list[str]]:
    """The new images' descriptors, with the model's `side` or the frozen descriptor's PCA."""
    if model is not None:
        from ..qk.describe import describe

        rep = describe(model, side, images, out_h5, workers=workers, progress=progress)
        bad = list(rep.bad)
    else:
        from ..starts.stage import describe_start_set

        rep = describe_start_set(pca, images, out_h5, workers=workers, progress=progress)
        bad = list(rep.failures)
    return read_descriptors(out_h5), bad


def _check_same_model(model, refs: list, side: str) -> None:
    """References described by another model than the one describing the new images give
    meaningless distances: refuse when the references' record says so (silent without one)."""
    if model is None:
        return
    records = [Path(os.fspath(p) + ".config.json") for p in refs]
    fps = []
    for rec in records:
        if not rec.is_file():
            return
        config = (read_json(rec) or {}).get("config", {})
        if "model_fingerprint" not in config or "side" not in config:
            return
        fps.append((config["side"], config["model_fingerprint"]))
    from ..models.qk_model import QKModel

    m = QKModel.load(model)
    other = "k" if side == "q" else "q"
    for rec, (ref_side, fp) in zip(records, fps):
        if ref_side == other and fp != m.side_fingerprint(other):
            raise UserError(f"{rec.name[:-len('.config.json')]}: described by another model than {model} "
                            f"(its {other.upper()} side differs); describe the references with the same model")
