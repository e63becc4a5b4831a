"""`--shard I/N`: split a per-image stage across machines that any scheduler can run.

Shard I of N takes a contiguous slice of the id-sorted image list, so the union of the N
shards' outputs, merged in shard order, is the unsharded output row for row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
