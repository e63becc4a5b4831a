"""``losses.csv`` of a training run: one row per step, the loss and the loss statistics."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .atomic import atomic_path


def write_losses(path: str | os.PathLike, losses: list[float], stats: list[dict]) -> None:
    keys = sorted({k for s in stats for k in s})
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["step", "loss", *keys])
            for i, (loss, s) in enumerate(zip(losses, stats), start=1):
                w.writerow([i, f"{loss:.6g}", *(_fmt(s.get(k)) for k in keys)])


def read_losses(path: str | os.PathLike) -> list[float]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
