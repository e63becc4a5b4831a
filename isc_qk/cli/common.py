"""What every command module shares: printing a result table and warnings, option defaults."""

from __future__ import annotations

from collections.abc import Sequence


def kv_table(title: str, rows: dict) -> None:
    """A two-column table of a stage's report on stdout."""
    from rich.table import Table

    from ..ui import out

    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows.items():
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out.print(t)


def split_list(text: str | None) -> list[str]:
    """'a, b,' -> ['a', 'b'] (comma-separated option values)."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def weights_option(value: str | None) -> str | None:
    """--backbone-weights: 'none' or '' means random initialisation."""
    return None if (value or "").lower() in ("", "none") else value


def warn_skipped(bad: Sequence[str]) -> None:
    from ..ui import warn_skipped as _warn

    _warn(list(bad))
