"""`--shard I/N`: split a per-image stage across machines that any scheduler can run.

Shard I of N takes a contiguous slice of the id-sorted image list, so the union of the N
shards' outputs, merged in shard order, is the unsharded output row for row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        """Parse 'I/N' with 0 <= I < N; None means the whole set (0/1)."""
        if text is None or text == "":
            return cls(0, 1)
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UserError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not 0 <= i < n:
            raise UserError(f"--shard {text}: need 0 <= I < N")
        return cls(i, n)

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def bounds(self, total: int) -> tuple[int, int]:
        return total * self.index // self.count, total * (self.index + 1) // self.count

    def select(self, items: Sequence[T]) -> list[T]:
        lo, hi = self.bounds(len(items))
        return list(items[lo:hi])

    def suffix(self) -> str:
        """File-name tag for a shard's output, e.g. '.shard-0-of-4'."""
        return "" if self.is_whole else f".shard-{self.index}-of-{self.count}"


def shard_file(path: str | os.PathLike, shard: Shard) -> Path:
    """`SET.h5` -> `SET.shard-I-of-N.h5` (the whole set keeps its name)."""
    p = Path(path)
    if shard.is_whole:
        return p
    return p.with_name(f"{p.stem}{shard.suffix()}{p.suffix}")


_SHARD_RE = re.compile(r"\.shard-(\d+)-of-(\d+)$")


def find_shards(stem: str, folder: Path, suffix: str) -> list[Path]:
    """The complete set of shard files ``STEM.shard-I-of-N SUFFIX`` for I = 0..N-1, in order.

    Refuses a mix of shard counts and reports missing shards by number.
    """
    found: dict[int, dict[int, Path]] = {}
    for p in folder.glob(f"{stem}.shard-*-of-*{suffix}"):
        m = _SHARD_RE.search(p.name[: -len(suffix)] if suffix else p.name)
        if m and p.name[: -len(suffix)][: m.start()] == stem:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise UserError(f"{folder / stem}: no shard outputs ({stem}.shard-I-of-N{suffix}) to merge")
    if len(found) > 1:
        raise UserError(f"{folder / stem}: shard outputs with different counts N={sorted(found)}; remove the stale ones")
    ((n, shards),) = found.items()
    missing = [i for i in range(n) if i not in shards]
    if missing:
        raise UserError(f"{folder / stem}: shard(s) {', '.join(map(str, missing))} of {n} not finished yet")
    return [shards[i] for i in range(n)]


def merge_descriptor_shards(path: str | os.PathLike) -> Path:
    """Stack SET.shard-0-of-N.h5 ... SET.shard-(N-1)-of-N.h5 into SET.h5, in shard order.

    Shards are contiguous slices of the id-sorted image list, so the result equals the
    unsharded run row for row. Refuses to merge while a shard is missing.
    """
    from .io import read_descriptors, write_descriptors

    p = Path(path)
    write_descriptors(p, read_descriptors(find_shards(p.stem, p.parent, p.suffix)))
    return p
