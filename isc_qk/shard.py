"""`--shard I/N`: split a per-image stage across machines that any scheduler can run.

Shard I of N takes a contiguous slice of the id-sorted image list, so the union of the N
shards' outputs, merged in shard order, is the unsharded output row for row.
"""

from __future__ import annotations

import os
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


def merge_descriptor_shards(path: str | os.PathLike, count: int, remove: bool = False) -> Path:
    """Stack SET.shard-0-of-N.h5 ... SET.shard-(N-1)-of-N.h5 into SET.h5, in shard order.

    Shards are contiguous slices of the id-sorted image list, so the result equals the
    unsharded run row for row. Refuses to merge while a shard is missing.
    """
    from .io import read_descriptors, write_descriptors

    parts = [shard_file(path, Shard(i, count)) for i in range(count)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise UserError(f"cannot merge: {len(missing)} shard(s) missing, e.g. {missing[0]}")
    write_descriptors(path, read_descriptors(parts))
    if remove:
        for p in parts:
            p.unlink()
    return Path(path)
