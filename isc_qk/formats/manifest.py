"""Augmentation manifest CSV: ``query_id,source_id,ops`` (ops = JSON of the sampled edits).

Rows are appended (and fsynced) as work proceeds, so a crash loses at most the rows not yet
appended; a truncated last line is dropped on reading.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import UserError
from .atomic import atomic_path

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


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read the manifest; a truncated last line (crash mid-write) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: augmentation manifest not found (run `isc-qk augment` first)")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
                raise UserError(f"{path}: expected header {','.join(MANIFEST_FIELDS)}")
            rows = [row for row in reader if None not in row.values() and row["query_id"]]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not an augmentation manifest ({type(e).__name__})") from None
    return rows


def manifest_sources(path: str | os.PathLike) -> dict[str, str]:
    """query_id -> source_id of every row (a non-empty manifest is required).

    Streams the rows (the same rules as `read_manifest`): DISC21 with 8 copies has 8M rows,
    and a list of 8M row dicts would take GBs for a moment."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: augmentation manifest not found (run `isc-qk augment` first)")
    sources: dict[str, str] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            if tuple(next(reader, ())) != MANIFEST_FIELDS:
                raise UserError(f"{path}: expected header {','.join(MANIFEST_FIELDS)}")
            for row in reader:
                if len(row) >= len(MANIFEST_FIELDS) and row[0]:  # a truncated last line is dropped
                    sources[row[0]] = row[1]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not an augmentation manifest ({type(e).__name__})") from None
    if not sources:
        raise UserError(f"{path}: the augmentation manifest has no rows")
    return sources
