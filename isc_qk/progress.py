"""One look for every long stage: a rich progress bar on stderr, quiet when not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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
def ticker(enabled: bool, total: int, what: str) -> Iterator[Callable[[int], None] | None]:
    """A bar for a loop of `total` items: yields `tick(n)`, or None when progress is off."""
    if not enabled:
        yield None
        return
    with progress_bar() as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)
