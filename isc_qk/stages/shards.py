"""`--shard I/N`: split a per-image stage across machines that any scheduler can run.

Shard I of N takes a contiguous slice of the id-sorted image list, so the union of the N
shards' outputs, merged in shard order, is the unsharded output row for row. Shard outputs
are named by inserting ``.shard-I-of-N`` (`shard_name`); `find_shards` collects a complete,
consistent set for merging.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    @classmethod
    def parse(cls, text: "str | Shard | None") -> "Shard":
        """Parse 'I/N' with 0 <= I < N; None means the whole set (0/1)."""
        if isinstance(text, Shard):
            return text
        if text is None or text == "":
            return cls(0, 1)
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UserError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not 0 <= i < n or n > 10**6:
            raise UserError(f"--shard {text}: need 0 <= I < N <= 1,000,000")
        return cls(i, n)

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def bounds(self, total: int) -> tuple[int, int]:
        return total * self.index // self.count, total * (self.index + 1) // self.count

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's slice; every shard of N must get items, or the set could never be merged."""
        if self.count > len(items):
            raise UserError(f"--shard {self}: {self.count} shards for only {len(items)} images leave some shards "
                            f"empty; use at most {len(items)} shards")
        lo, hi = self.bounds(len(items))
        return list(items[lo:hi])

    def suffix(self) -> str:
        """File-name tag of a shard's output, e.g. '.shard-0-of-4' ('' for the whole set)."""
        return "" if self.is_whole else f".shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_name(path: str | Path, shard: Shard, keep_suffix: bool = True) -> Path:
    """``SET.h5`` -> ``SET.shard-I-of-N.h5`` (keep_suffix) or ``PREFIX`` -> ``PREFIX.shard-I-of-N``."""
    p = Path(path)
    if shard.is_whole:
        return p
    if keep_suffix and p.suffix:
        return p.with_name(f"{p.stem}{shard.suffix()}{p.suffix}")
    return p.with_name(p.name + shard.suffix())


_SHARD_RE = re.compile(r"\.shard-(\d+)-of-(\d+)$")


def find_shards(path: str | Path, keep_suffix: bool = True, marker: str = "") -> list[Path]:
    """The complete set of shard outputs of `path` (named as `shard_name` does), in order.

    `marker` is an extra suffix that must exist for a shard to count (e.g. '.npy' for table
    prefixes). Refuses a mix of shard counts and reports missing shards by number.
    """
    p = Path(path)
    stem, suffix = (p.stem, p.suffix) if keep_suffix and p.suffix else (p.name, "")
    tail = suffix + marker
    found: dict[int, dict[int, Path]] = {}
    for f in p.parent.glob(f"{stem}.shard-*-of-*{tail}"):
        head = f.name[: len(f.name) - len(tail)] if tail else f.name
        m = _SHARD_RE.search(head)
        if m and head[: m.start()] == stem:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p.parent / (head + suffix)
    if not found:
        raise UserError(f"{p}: no shard outputs ({stem}.shard-I-of-N{suffix}) to merge")
    if len(found) > 1:
        raise UserError(f"{p}: shard outputs with different counts N={sorted(found)}; remove the stale ones")
    ((n, shards),) = found.items()
    missing = [i for i in range(n) if i not in shards]
    if missing:
        raise UserError(f"{p}: shard(s) {', '.join(map(str, missing))} of {n} not finished yet")
    return [shards[i] for i in range(n)]
