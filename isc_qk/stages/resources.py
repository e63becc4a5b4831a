"""What a stage asks of the machine, checked before the work: memory for its batches.

Why: a batch that does not fit is not an exception Python can catch: the kernel kills the
process (no message, partial files left behind). So a stage estimates the memory its settings
need (the decoded pixels of one batch, a table chunk...) and refuses, in one line, settings
that cannot fit in the memory available now (the smaller of the system's and the container's
limit). Disk space is reserved where files are created (`formats.atomic.reserve_space`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..configs import check_workers, max_workers  # noqa: F401  (the stages' checks, in one place)
from ..errors import UserError


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 (or v1) memory limit, if this process has one."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit).read_text().strip()
            if raw == "max":
                return None
            cap, used = int(raw), int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap < (1 << 60):  # v1 reports "no limit" as a huge number
            return max(0, cap - used)
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate without being killed, or None if unknown."""
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(known) if known else None


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def check_memory(nbytes: float, what: str, advice: str) -> None:
    """UserError when `what` needs more memory than is available now."""
    have = available_memory()
    if have is not None and nbytes > have:
        raise UserError(f"{what} needs about {gib(nbytes)} of memory, {gib(have)} is available; {advice}")


def pixels_per_batch(batch: int, size: int, option: str = "--batch") -> None:
    """A batch of `batch` decoded size x size RGB images (uint8 + float32 + the network's first
    activations: ~4x the float32 pixels) must fit in memory."""
    check_memory(4.0 * batch * size * size * 3 * 4, f"{option} {batch} at {size} x {size} px",
                 f"use a smaller {option}")
