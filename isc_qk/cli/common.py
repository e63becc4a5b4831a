"""What every command module shares: printing a result table and warnings, option defaults."""

from __future__ import annotations

from collections.abc import Sequence


SET_HELP = ("Any setting by its dotted name, repeatable: --set train.loss.tau=2 --set model.output_l2=true "
            "(the names of `isc-qk recipe NAME` and of the saved records); applied last.")
RECIPE_HELP = "Start from this recipe's settings (paper, gist, sscd, demo, demo-sscd, quick; `isc-qk recipe NAME`)."


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


def override(obj, **values):
    """`obj` (a config dataclass) with the given fields replaced, those given as None left alone:
    options a user left out keep the recipe's (or the default) value."""
    import dataclasses

    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(obj, **given) if given else obj


def default_weights(backbone: str) -> str | None:
    """The starting weights of a newly chosen backbone: ImageNet for a trainable one, none for a
    frozen encoder (it has its own)."""
    from ..encoders import is_trainable, parse

    return "imagenet" if is_trainable(parse(backbone, "backbone")) else None


def warn_skipped(bad: Sequence[str]) -> None:
    from ..ui import warn_skipped as _warn

    _warn(list(bad))
