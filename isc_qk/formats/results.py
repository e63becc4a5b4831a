"""The pipeline's results: ``results.json`` (every number) and ``results.md`` (the table).

One row per (method, phase, normalisation), like the QK paper's Table 2.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import UserError
from .atomic import atomic_path, read_json, write_json


@dataclass
class ResultRow:
    method: str  # "GIST-PCA256", "ImageNet features", "QK Iteration", "in-batch negatives", ...
    phase: str  # "-" for baselines without phases, else Q1, K1, ...
    normalization: str  # "none", "nes", "whiten"
    micro_ap: float
    recall_at_p90: float | None
    recall_at_rank1: float
    image_passes: float = 0.0  # training images seen / training set size
    seconds: float = 0.0  # wall time of the stage that produced the descriptors
    curve: dict = field(default_factory=dict, repr=False)  # {"precision": [...], "recall": [...]}

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.phase, self.normalization)


class Results:
    """An ordered, de-duplicated list of rows, saved after every change (resumable)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[ResultRow] = []
        if self.path.is_file():
            rows = read_json(self.path).get("rows", [])
            names = {f.name for f in fields(ResultRow)}
            try:
                if not isinstance(rows, list) or not all(isinstance(r, dict) and set(r) <= names for r in rows):
                    raise TypeError
                self.rows = [ResultRow(**r) for r in rows]
            except TypeError:
                raise UserError(f"{self.path}: not a results file of isc-qk (its rows are damaged)") from None

    def get(self, method: str, phase: str, normalization: str = "none") -> ResultRow | None:
        return next((r for r in self.rows if r.key == (method, phase, normalization)), None)

    def add(self, row: ResultRow) -> None:
        self.rows = [r for r in self.rows if r.key != row.key] + [row]
        self.save()

    def save(self) -> None:
        write_json(self.path, {"rows": [asdict(r) for r in self.rows]})


def fmt_p90(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.4f}"


def markdown_table(rows: list[ResultRow]) -> str:
    lines = [
        "| method | phase | normalisation | micro-AP | R@P90 | R@1 | image passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.phase} | {r.normalization} | {r.micro_ap:.4f} | {fmt_p90(r.recall_at_p90)} "
            f"| {r.recall_at_rank1:.4f} | {r.image_passes:g} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: str | os.PathLike, rows: list[ResultRow], header: str = "") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text((header + "\n\n" if header else "") + markdown_table(rows))
