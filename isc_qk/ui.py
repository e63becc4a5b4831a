"""What users see while stages run: rich progress bars and warnings on stderr, results on stdout.

One look for every long stage: `ticker` gives a loop a bar (or nothing, when progress is off),
`warn` prints one warning line, `warn_skipped` lists the inputs a stage left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
out = Console()


def progress_bar(transient: bool = False) -> Progress:
    """A progress bar with count, rate-derived ETA and elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


@contextlib.contextmanager
def ticker(enabled: bool, total: int | None, what: str, transient: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar for a loop of `total` items: yields `tick(n)` (a no-op when progress is off)."""
    if not enabled:
        yield lambda n: None
        return
    with progress_bar(transient=transient) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


def warn_skipped(items: Sequence[str], what: str = "unreadable image(s)", shown: int = 5) -> None:
    """One warning line naming the first few inputs a stage left out, and how many in all."""
    if items:
        head = "; ".join(items[:shown]) + (f"; ... ({len(items)} in all)" if len(items) > shown else "")
        warn(f"skipped {len(items)} {what}: {head}")
