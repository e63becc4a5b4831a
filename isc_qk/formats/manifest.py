"""Augmentation manifest CSV: ``query_id,source_id,ops`` (ops = JSON of the sampled edits).

Rows are appended (and fsynced) as work proceeds, so a crash loses at most the rows not yet
appended; a truncated last line is dropped on reading.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import UserError
from .atomic import atomic_path
from .ids import id_problem

MANIFEST_FIELDS = ("query_id", "source_id", "ops")


def append_manifest_rows(path: str | os.PathLike, rows: Iterable[tuple[str, str, str]]) -> None:
    """Append rows as work proceeds (a crash loses at most the rows not yet appended)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if new:
            w.writerow(MANIFEST_FIELDS)
        w.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def write_manifest(path: str | os.PathLike, rows: Sequence[tuple[str, str, str]]) -> None:
    """Replace the manifest with exactly `rows`, atomically."""
    with atomic_path(path) as tmp:
        append_manifest_rows(tmp, rows)


def _rows(path: Path) -> Iterator[dict[str, str]]:
    """The complete rows of a manifest, one at a time; a truncated last line (crash mid-write)
    is dropped."""
    if not path.is_file():
        raise UserError(f"{path}: augmentation manifest not found (run `isc-qk augment` first)")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if (",".join(MANIFEST_FIELDS) + "\n").encode().startswith(head):  # empty, or its header cut short (full disk)
        return
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
                raise UserError(f"{path}: expected header {','.join(MANIFEST_FIELDS)}")
            for row in reader:
                if None not in row.values() and row["query_id"]:
                    yield row
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not an augmentation manifest ({type(e).__name__})") from None


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read the manifest; a truncated last line (crash mid-write) is dropped."""
    return list(_rows(Path(path)))


def manifest_sources(path: str | os.PathLike) -> dict[str, str]:
    """query_id -> source_id of every row (a non-empty manifest is required).

    Streams the rows: DISC21 with 8 copies has 8M of them, and a list of 8M row dicts would
    take GBs for a moment."""
    path = Path(path)
    sources: dict[str, str] = {}
    for n, r in enumerate(_rows(path), start=2):
        q, s = r["query_id"], r["source_id"]
        why = id_problem(q) or id_problem(s)
        if why:
            raise UserError(f"{path}: row {n}: {q!r},{s!r} cannot be image ids ({why})")
        if sources.setdefault(q, s) != s:
            raise UserError(f"{path}: query {q} is listed with two sources ({sources[q]} and {s})")
    if not sources:
        raise UserError(f"{path}: the augmentation manifest has no rows")
    return sources
