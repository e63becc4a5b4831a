"""`isc-qk inspect`: an HTML error gallery of one result (or two side by side).

One call: evaluate each result with the evaluation's exact search (once), pick what to show
(`analysis`, `families`), scan the shown queries against all references (`probe`), write the
thumbnails of the shown images only (`thumbs`), the PR plot, ``index.html`` and
``inspect.json`` (the same content for scripts) into the output folder.

The output folder is the tool's: it must be new, empty, or an earlier report (its
``inspect.json`` says so); then only the files this tool wrote are replaced (a file the user
put there is never touched), each atomically, the page last but one and the JSON (which lists
the thumbnails, so that the next run can remove the ones it no longer shows) last. All the
reading and searching happens before the folder is touched, so a bad input leaves nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..evaluation.evaluate import evaluate
from ..formats.atomic import atomic_path, read_json, write_json
from ..formats.descriptors import read_descriptors
from ..formats.ground_truth import read_ground_truth
from ..stages import guard, lock
from ..ui import console
from . import NEIGHBOURS, SHOW, THUMB_SIZE, analysis, families, page, thumbs

REPORT_KIND = "isc-qk inspect report"
INDEX = "index.html"
DATA = "inspect.json"
PR_PNG = "pr.png"
LOCK = ".inspect.lock"


@dataclass
class InspectReport:
    out: str
    index: str
    runs: list[dict]
    false_positives_shown: int
    missed: list[int]
    thumbnails: int
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _paths(p) -> list[Path]:
    if p is None:
        return []
    return [Path(p)] if isinstance(p, (str, os.PathLike)) else [Path(x) for x in p]


def _default_names(specs: list[list[Path]]) -> list[str]:
    """Results' names from their query files: the folder each lies in (``runs/sscd/queries.h5``
    -> sscd), or the file names when the folders do not tell them apart."""
    parents = [f[0].resolve().parent.name for f in specs]
    if len(set(parents)) == len(parents) and all(parents):
        return parents
    stems = [f[0].name.removesuffix(".h5") for f in specs]
    return stems if len(set(stems)) == len(stems) else [f"{s} ({i + 1})" for i, s in enumerate(stems)]


def check_out_folder(out: Path) -> dict | None:
    """The folder must be new, empty, or an earlier report; returns that report's JSON (or None)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"--out {out} is an existing file; a folder is needed here")
    entries = [p for p in out.iterdir() if p.name != LOCK]
    if not entries:
        return None
    data = out / DATA
    old = None
    if data.is_file():
        try:
            old = read_json(data)
        except UserError:
            old = None
    if not isinstance(old, dict) or old.get("kind") != REPORT_KIND:
        raise UserError(f"--out {out} exists and holds files that inspect did not write (no {DATA} of an earlier "
                        "report); choose a new or empty folder")
    return old


def inspect_results(
    ground_truth: str | os.PathLike,
    query,
    reference,
    query_images: str | os.PathLike,
    reference_images: str | os.PathLike,
    out: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    name: str | None = None,
    compare_query=None,
    compare_reference=None,
    compare_name: str | None = None,
    show: int = SHOW,
    neighbours: int = NEIGHBOURS,
    max_results: int | None = None,
    all_queries: bool = False,
    threads: int | None = None,
    thumb_size: int = THUMB_SIZE,
    workers: int = 2,
    progress: bool = True,
) -> InspectReport:
    """Write OUT/index.html (+ inspect.json, pr.png, thumbs/) for the result(s); see the module docstring.

    Three steps: check every option and path, read and search (nothing written yet), write."""
    t0 = time.perf_counter()
    out = Path(out)
    qfiles, rfiles = _paths(query), _paths(reference)
    cq, cr = _paths(compare_query), _paths(compare_reference)
    folders = {"q": Path(query_images), "r": Path(reference_images)}
    _check_options(qfiles, rfiles, cq, cr, show, neighbours, thumb_size, folders)
    inputs = {"--ground-truth": ground_truth, "--manifest": manifest, "--query-images": folders["q"],
              "--reference-images": folders["r"], **{f"--query {p}": p for p in qfiles},
              **{f"--reference {p}": p for p in rfiles}, **{f"--compare-query {p}": p for p in cq},
              **{f"--compare-reference {p}": p for p in cr}}
    guard.check_paths({"--out": out}, inputs, {"--out": True})
    check_out_folder(out)

    gt = read_ground_truth(ground_truth)
    specs = [(qfiles, rfiles)] + ([(cq, cr)] if cq else [])
    names = [given or default for given, default in zip((name, compare_name), _default_names([q for q, _ in specs]))]
    if len(names) == 2 and names[0] == names[1]:
        raise UserError(f"both results are named {names[0]!r}: give --name / --compare-name")
    groups = families.edit_groups(manifest, gt.query_ids) if manifest is not None else None
    runs = []
    for run_name, (qf, rf) in zip(names, specs):
        q, r = read_descriptors(qf), read_descriptors(rf)
        if progress:
            console.print(f"[bold]inspect[/] evaluating {run_name}: {len(q.ids):,} queries x {len(r.ids):,} references")
        res = evaluate(q, r, gt, max_results=max_results, all_queries=all_queries, threads=threads, progress=progress)
        runs.append(analysis.Run(run_name, q, r, res))
    shown = _select(runs, gt, groups, show, neighbours)

    inputs_record = {"ground_truth": ground_truth, "query": qfiles, "reference": rfiles, "compare_query": cq or None,
                     "compare_reference": cr or None, "query_images": folders["q"],
                     "reference_images": folders["r"], "manifest": manifest}
    summaries, n_thumbs, failures = _write(out, runs, gt, shown, folders, thumb_size, workers, inputs_record)
    fps, missed = shown["fps"], shown["missed"]
    return InspectReport(str(out), str(out / INDEX), summaries, sum(len(f) for f in fps), [c for _, c in missed],
                         n_thumbs, failures, round(time.perf_counter() - t0, 3))


def _check_options(qfiles: list[Path], rfiles: list[Path], cq: list[Path], cr: list[Path], show: int,
                   neighbours: int, thumb_size: int, folders: dict[str, Path]) -> None:
    if not qfiles or not rfiles:
        raise UserError("give --query and --reference descriptor files")
    if bool(cq) != bool(cr):
        raise UserError("--compare-query and --compare-reference go together (the second result to compare)")
    if show < 1:
        raise UserError(f"--show must be >= 1, got {show}")
    if not 0 <= neighbours <= 20:
        raise UserError(f"--neighbours must be in 0..20, got {neighbours}")
    if not 32 <= thumb_size <= 512:
        raise UserError(f"--thumb-size must be in 32..512 pixels, got {thumb_size}")
    for opt, folder in (("--query-images", folders["q"]), ("--reference-images", folders["r"])):
        if not folder.is_dir():
            raise UserError(f"{opt} {folder}: " + ("is a file, not an image folder" if folder.exists()
                                                   else "image folder not found"))


def _select(runs: list, gt, groups, show: int, neighbours: int) -> dict:
    """What the page shows: false positives, misses, the comparison, per-edit metrics."""
    fps = [analysis.false_positives(run, gt, show) for run in runs]
    missed = [analysis.misses(run, gt, show) for run in runs]
    comp = analysis.comparison(runs[0], runs[1], gt, max(1, show // 2)) if len(runs) > 1 else None
    for run in runs:
        run.run_probe(max(neighbours, 1))
    for run, fp, (rows, _) in zip(runs, fps, missed):
        analysis.fill(fp, run, neighbours)
        analysis.fill(rows, run, neighbours)
    if comp is not None:
        analysis.fill_comparison(comp, runs[0], runs[1])
    fam = None
    if groups is not None:
        fam = {"unlisted": groups.unlisted}
        for entries in [*fps, *(rows for rows, _ in missed),
                        *([comp["a_only"]["rows"], comp["b_only"]["rows"]] if comp else [])]:
            for e in entries:
                e["edits"] = groups.per_query.get(e["query"], [])
        for key, g in (("family", groups.families), ("op", groups.ops)):
            per_run = [families.group_metrics(run.res, run.query, gt, g) for run in runs]
            fam[key] = [{"group": rows[0]["group"], "queries": rows[0]["queries"], "positives": rows[0]["positives"],
                         "runs": rows} for rows in zip(*per_run)]
    return {"fps": fps, "missed": missed, "comparison": comp, "families": fam}


def _write(out: Path, runs: list, gt, shown: dict, folders: dict[str, Path], thumb_size: int, workers: int,
           inputs: dict) -> tuple[list[dict], int, list[str]]:
    """The report's files (the folder is the tool's from here on); (summaries, thumbnails, failures)."""
    from ..plots import plot_pr_curves

    fps, missed, comp, fam = shown["fps"], shown["missed"], shown["comparison"], shown["families"]
    wanted = _images(fps, [m[0] for m in missed], comp)
    out.mkdir(parents=True, exist_ok=True)
    with lock.exclusive(out / LOCK, str(out)):
        old = check_out_folder(out)
        thumb_paths, failures = thumbs.make_thumbnails(wanted, folders, out, thumb_size, workers)
        plot_pr_curves(out / PR_PNG, {run.name: run.res for run in runs})
        summaries = [analysis.summary(run) for run in runs]
        context = {
            "runs": summaries, "fps": fps, "missed": [{"count": c, "rows": rows} for rows, c in missed],
            "families": fam, "comparison": comp, "failures": failures, "size": thumb_size, "pr_png": PR_PNG,
            "version": __version__,
            "inputs": {"ground_truth": str(inputs["ground_truth"]), "manifest": str(inputs["manifest"])},
        }
        with atomic_path(out / INDEX) as tmp:
            tmp.write_text(page.render(context, thumb_paths), encoding="utf-8")
        used = sorted(set(thumb_paths.values()))
        write_json(out / DATA, {
            "kind": REPORT_KIND, "isc_qk_version": __version__,
            "inputs": {k: [os.path.abspath(p) for p in v] if isinstance(v, list) else (None if v is None else os.path.abspath(v))
                       for k, v in inputs.items()},
            "summary": summaries,
            "false_positives": {run.name: fp for run, fp in zip(runs, fps)},
            "missed": {run.name: {"count": c, "shown": rows, "all": _all_missed(run, gt)}
                       for run, (rows, c) in zip(runs, missed)},
            "families": fam, "comparison": comp, "thumbnails": used, "failures": failures,
            "images": {f"{k}/{i}": p for (k, i), p in sorted(thumb_paths.items())},
        })
        if old is not None:
            thumbs.remove_stale(out, old.get("thumbnails", []), set(used))
    return summaries, len(used), failures


def _images(fps: list[list[dict]], misses: list[list[dict]], comp: dict | None) -> set[tuple[str, str]]:
    """Every (kind, id) the page shows."""
    want: set[tuple[str, str]] = set()
    for fp in fps:
        for e in fp:
            want |= {("q", e["query"]), ("r", e["reference"])} | {("r", t["reference"]) for t in e["true"]}
    for rows in misses:
        for e in rows:
            want |= {("q", e["query"]), ("r", e["reference"])} | {("r", x["reference"]) for x in e["above"]}
    if comp is not None:
        for key in ("a_only", "b_only"):
            for e in comp[key]["rows"]:
                want |= {("q", e["query"]), ("r", e["reference"])}
                if e["loser_top"]:
                    want.add(("r", e["loser_top"]["reference"]))
    return want


def _all_missed(run: analysis.Run, gt) -> list[dict]:
    """Every ground-truth pair not found at the operating point, with its exact score (for scripts)."""
    import numpy as np

    idx = np.flatnonzero(~run.found(np.arange(len(gt.pairs))))
    pairs = [gt.pairs[g] for g in idx]
    scores = run.pair_scores(pairs)
    return [{"query": q, "reference": r, "score": None if np.isnan(s) else float(s),
             "retrieved": bool(run.res.match_index[g] >= 0)} for (q, r), s, g in zip(pairs, scores, idx)]
