"""Ground-truth CSV: header ``query_id,reference_id``; an empty reference means "no match".

A query may have more than one row (several references); every listed query is searched.
A row listed twice, a query listed both as a distractor and with a match, or an id that no
descriptor file could hold (a NUL byte, a newline...) is refused with its line number: the
official tool would count a duplicated pair twice.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .atomic import atomic_path
from .ids import id_problem


@dataclass
class GroundTruth:
    """Queries listed in the ground truth and their true (query, reference) pairs."""

    query_ids: list[str]  # every query listed, matched or not, in file order, unique
    pairs: list[tuple[str, str]]  # every (query, reference) match, unique

    @property
    def n_positives(self) -> int:
        return len(self.pairs)


def read_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Read `query_id,reference_id` rows; an empty reference id means a distractor query."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's BOM is fine
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file") from None
    except csv.Error as e:
        raise UserError(f"{path}: not a ground-truth CSV ({e})") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["query_id", "reference_id"]:
        raise UserError(f"{path}: expected header 'query_id,reference_id'")
    queries: dict[str, None] = {}
    pairs: dict[tuple[str, str], None] = {}
    seen: dict[tuple[str, str], int] = {}  # row -> line
    distractor: dict[str, int] = {}  # query listed with an empty reference -> line
    matched: dict[str, int] = {}  # query listed with a reference -> first line
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise UserError(f"{path}:{lineno}: expected 2 columns, got {len(row)}")
        q, r = row[0].strip(), row[1].strip()
        if not q:
            raise UserError(f"{path}:{lineno}: empty query_id")
        for name, v in (("query_id", q), ("reference_id", r)):
            why = id_problem(v) if v else None
            if why:
                raise UserError(f"{path}:{lineno}: {name} {v!r} cannot be an image id ({why})")
        if (q, r) in seen:
            raise UserError(f"{path}:{lineno}: duplicate {'pair' if r else 'row'} {q},{r} (repeats line {seen[q, r]})")
        seen[q, r] = lineno
        if r:
            matched.setdefault(q, lineno)
        else:
            distractor[q] = lineno
        if q in distractor and q in matched:
            raise UserError(f"{path}:{lineno}: query {q} is listed without a reference (line {distractor[q]}) "
                            f"and with one (line {matched[q]})")
        queries.setdefault(q)
        if r:
            pairs.setdefault((q, r))
    return GroundTruth(list(queries), list(pairs))


def write_ground_truth(path: str | os.PathLike, rows: Iterable[tuple[str, str | None]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["query_id", "reference_id"])
            for q, r in rows:
                w.writerow([q, r or ""])
