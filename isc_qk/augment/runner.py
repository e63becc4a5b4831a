"""`isc-qk augment`: K edited copies of every image of a folder, resumable, parallel, shardable.

Output folder: ``ID_aC.jpg`` per query, ``manifest.csv`` (query_id,source_id,ops), the stage
record ``augment_config.json`` and ``augment_report.json`` (``manifest.shard-I-of-N.csv`` and
``augment.shard-I-of-N_*`` for a shard; `merge_manifests` joins them).

Resumability: each output JPEG is written atomically and only then gets its manifest row; on a
re-run an output counts as done only if both exist, so Ctrl-C or a crash loses at most the
images in flight. Raising ``--copies`` adds the new copies only (copy c's edit does not depend
on K); other settings, or another source folder, into the same output are refused.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..configs import AugmentConfig
from ..errors import UserError
from ..formats.ids import IMAGE_SUFFIXES
from ..formats.images import ImageFile, list_images
from ..formats.manifest import append_manifest_rows, read_manifest, write_manifest
from ..stages.artifact import Artifact, Input
from ..stages.merge import merge_shards
from ..stages.resources import check_workers
from ..stages.runner import decode_file
from ..stages.shards import Shard, find_shards
from ..ui import ticker
from .apply import augment_image
from .ops import Context
from .recipe import query_id, recipe_fingerprint

MANIFEST_NAME = "manifest"
STAGE = "augment"
KIND = "augmentation"


@dataclass
class AugmentRecord:
    """What the outputs depend on: the settings and the recipe (saved beside them)."""

    augment: AugmentConfig
    recipe: str
    shard: str = "0/1"


@dataclass
class AugmentReport:
    images: int  # source images in this run (this shard)
    copies: int
    done: int  # queries written by this run
    skipped_existing: int  # queries already there (file + manifest row)
    failed: list[tuple[str, str]]  # (file, reason): unreadable inputs or edits that raised
    ignored: list[str]  # files of the folder without an image suffix
    out_dir: str
    manifest: str
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def check(self, strict: bool) -> None:
        """Raise AugmentFailed when nothing could be done, or with --strict when anything failed."""
        if not self.failed:
            return
        if self.done + self.skipped_existing == 0:
            raise AugmentFailed(self, f"none of the {self.images} images could be augmented "
                                      f"({len(self.failed)} failed, e.g. {self.failed[0][1]})")
        if strict:
            raise AugmentFailed(self, f"{len(self.failed)} of {self.images} images failed (--strict), "
                                      f"e.g. {self.failed[0][1]}")


class AugmentFailed(UserError):
    """A run that finished but must exit non-zero; carries its report for printing."""

    def __init__(self, report: AugmentReport, message: str) -> None:
        super().__init__(message)
        self.report = report


def artifact(out_dir: str | os.PathLike, shard: Shard) -> Artifact:
    """The folder and this shard's sidecars (shards of one folder run side by side)."""
    return Artifact(out_dir, KIND, layout="folder", stage=STAGE + shard.suffix())


def manifest_path(out_dir: str | os.PathLike, shard: Shard = Shard(0, 1)) -> Path:
    return Path(out_dir) / f"{MANIFEST_NAME}{shard.suffix()}.csv"


# --------------------------------------------------------------------------- worker processes
_WORKER: dict[str, Any] = {}


def _init_worker(images_dir: str, out_dir: str, cfg: AugmentConfig, images: Sequence[ImageFile] | None = None,
                 ignore_sigint: bool = True) -> None:
    """Per-process state: the full folder list (for 'another image' ops), the settings, and the
    AugLy shims (every process that runs the recipe installs them here, at its start)."""
    from . import shims

    shims.apply()
    if ignore_sigint:  # the parent handles Ctrl-C and stops the pool
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(ctx=Context(images if images is not None else list_images(images_dir), cfg.max_side),
                   out_dir=Path(out_dir), cfg=cfg)


def _work(source_id: str, path: str, copies: Sequence[int]) -> tuple[str, list[tuple[str, str, str]], str | None]:
    """Write the requested copies of one source image; returns manifest rows or a failure."""
    from ..formats.atomic import atomic_path

    ctx: Context = _WORKER["ctx"]
    cfg: AugmentConfig = _WORKER["cfg"]
    out_dir: Path = _WORKER["out_dir"]
    decoded, why = decode_file(path, [lambda image: image])  # the one decode error policy
    if why is not None:
        return source_id, [], f"unreadable: {why}"
    src = decoded[0]
    rows = []
    for c in copies:
        qid = query_id(source_id, c)
        try:
            im, edits = augment_image(src, source_id, c, cfg.seed, ctx)
        except Exception as e:  # a bad edit on one image must not stop a million-image run
            return source_id, rows, f"{path}: edit failed for {qid}: {type(e).__name__}: {e}"
        with atomic_path(out_dir / f"{qid}.jpg") as tmp:
            im.save(tmp, format="JPEG", quality=cfg.jpeg_quality)
        rows.append((qid, source_id, json.dumps(edits, separators=(",", ":"))))
    return source_id, rows, None


# --------------------------------------------------------------------------- resume
def _valid_row(row: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    if wanted.get(row["query_id"]) != row["source_id"]:
        return False
    try:
        return isinstance(json.loads(row["ops"]), list)
    except json.JSONDecodeError:
        return False


def _trusted_rows(manifest: Path, out_dir: Path, wanted: Mapping[str, str]) -> dict[str, tuple[str, str, str]]:
    """Manifest rows (by query id) that belong to this run and whose output JPEG exists.

    A truncated last line, duplicates, rows of other shards and rows whose JPEG is missing
    are left out; the caller rewrites the manifest to exactly these rows so that appending
    new rows afterwards leaves a clean CSV.
    """
    if not manifest.exists():
        return {}
    rows: dict[str, tuple[str, str, str]] = {}
    for r in read_manifest(manifest):
        if _valid_row(r, wanted) and (out_dir / f"{r['query_id']}.jpg").is_file():
            rows[r["query_id"]] = (r["query_id"], r["source_id"], r["ops"])
    return rows


def _remove_stale_temps(out_dir: Path, qids: set[str]) -> None:
    """Temp files left by a killed run of THIS shard (the lock says none of ours is running;
    other shards may be writing theirs)."""
    pat = re.compile(r"^\.(.+)\.jpg\..*\.tmp$")
    for p in out_dir.glob(".*.jpg.*.tmp"):
        m = pat.match(p.name)
        if m and m.group(1) in qids:
            p.unlink(missing_ok=True)


def _list_ignored(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- the stage
def augment_folder(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: AugmentConfig | None = None,
    workers: int = 1,
    shard: Shard | str | None = None,
    strict: bool = False,
    progress: bool = True,
) -> AugmentReport:
    """Write `cfg.copies` edited JPEGs per image of `images_dir` into `out_dir`, plus a manifest.

    Resumable and deterministic (see `augment.recipe`). Unreadable images are reported in the
    returned report and skipped; `AugmentFailed` is raised (after finishing the rest) when
    nothing could be done, or when `strict` and anything failed.
    """
    cfg = cfg or AugmentConfig()
    cfg.validate()
    check_workers(workers)
    shard = Shard.parse(shard)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    t0 = time.perf_counter()
    images = list_images(images_dir)
    mine = shard.select(images)
    art = artifact(out_dir, shard)
    record = AugmentRecord(cfg, recipe_fingerprint(), str(shard))
    inputs = [Input.of_images("images", images_dir, images)]
    wanted = {query_id(f.id, c): f.id for f in mine for c in range(cfg.copies)}
    manifest = manifest_path(out_dir, shard)
    writes = [manifest, *(out_dir / f"{q}.jpg" for q in wanted)]
    # More (or fewer) copies extend the same experiment: copy c's edit does not depend on K.
    # Written queries (each JPEG with its manifest row) are kept when a run fails: it resumes.
    with art.open(record, inputs, ignore=("augment.copies",), skip_done=False, writes=writes,
                  resumable=manifest.exists):
        trusted = _trusted_rows(manifest, out_dir, wanted)
        if manifest.exists():
            write_manifest(manifest, list(trusted.values()))
        _remove_stale_temps(out_dir, set(wanted))
        tasks = [(f.id, str(f.path), todo) for f in mine
                 if (todo := [c for c in range(cfg.copies) if query_id(f.id, c) not in trusted])]
        failed: list[tuple[str, str]] = []
        done = 0

        with ticker(progress, len(wanted), "augment") as tick:
            tick(len(trusted))

            def handle(result: tuple[str, list[tuple[str, str, str]], str | None], path: str, n: int) -> None:
                nonlocal done
                _, rows, error = result
                if rows:
                    append_manifest_rows(manifest, rows)
                    done += len(rows)
                if error:
                    failed.append((path, error))
                tick(n)

            if workers == 1 or len(tasks) <= 1:
                _init_worker(str(images_dir), str(out_dir), cfg, images, ignore_sigint=False)
                try:
                    for sid, path, todo in tasks:
                        handle(_work(sid, path, todo), path, len(todo))
                finally:
                    _WORKER.clear()
            else:
                _run_pool(tasks, workers, images_dir, out_dir, cfg, handle)

        final = _trusted_rows(manifest, out_dir, wanted)
        write_manifest(manifest, [final[q] for q in sorted(final)])
        report = AugmentReport(
            images=len(mine), copies=cfg.copies, done=done, skipped_existing=len(trusted), failed=failed,
            ignored=_list_ignored(images_dir), out_dir=str(out_dir), manifest=str(manifest),
            seconds=round(time.perf_counter() - t0, 3),
        )
        art.finish({**asdict(report), "images_per_s": report.images_per_s, "shard": str(shard)})
    report.check(strict)
    return report


def _run_pool(tasks, workers: int, images_dir: Path, out_dir: Path, cfg: AugmentConfig, handle) -> None:
    """Worker processes ('spawn': safe even if the caller has TensorFlow loaded), bounded queue.

    At most 4 tasks per worker are in flight, so Ctrl-C loses little work: the parent stops
    submitting, cancels what has not started, and re-raises.
    """
    import multiprocessing

    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(str(images_dir), str(out_dir), cfg))
    pending: dict = {}
    it = iter(tasks)
    try:
        def submit_more() -> None:
            while len(pending) < 4 * workers:
                t = next(it, None)
                if t is None:
                    return
                pending[ex.submit(_work, *t)] = t

        submit_more()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                sid, path, todo = pending.pop(fut)
                handle(fut.result(), path, len(todo))
            submit_more()
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


# --------------------------------------------------------------------------- shard merge
def merge_manifests(out_dir: str | os.PathLike) -> Path:
    """Combine finished shard manifests into OUT_DIR/manifest.csv, identical to an unsharded run
    (`stages.merge`: refuses shards made with other settings or from another source folder)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: output folder not found")
    n = len(find_shards(manifest_path(out_dir)))
    shards = [artifact(out_dir, Shard(i, n)) for i in range(n)]

    def rows_of(parts: list[Path]) -> dict[str, tuple[str, str, str]]:
        rows: dict[str, tuple[str, str, str]] = {}
        for part in parts:
            for r in read_manifest(part):
                if r["query_id"] in rows:
                    raise UserError(f"{out_dir}: query {r['query_id']} appears in two shard manifests")
                rows[r["query_id"]] = (r["query_id"], r["source_id"], r["ops"])
        return rows

    target = manifest_path(out_dir)
    if target.exists() and artifact(out_dir, Shard(0, 1)).record() is not None:
        # an earlier run's manifest: merging must not drop what it lists (checked before any
        # write; a manifest without the stage's record is refused by the merge itself)
        made = rows_of([manifest_path(out_dir, Shard(i, n)) for i in range(n)])
        lost = sorted(r["query_id"] for r in read_manifest(target) if r["query_id"] not in made)
        if lost:
            raise UserError(f"{target}: lists {len(lost)} queries no shard made (e.g. {lost[0]}, from an earlier "
                            "run into this folder); merging would drop them: merge the shards in a new folder")

    def join(parts: list[Path], target: Path) -> None:
        rows = rows_of(parts)
        write_manifest(target, [rows[q] for q in sorted(rows)])

    def report(reports: list[dict]) -> dict:
        return {"rows": sum(len(read_manifest(manifest_path(out_dir, Shard(i, n)))) for i in range(n))}

    merge_shards(artifact(out_dir, Shard(0, 1)), lambda shard, rec: [manifest_path(out_dir, shard)], join, report,
                 shards=shards, ignore=("augment.copies",))
    return manifest_path(out_dir)
