"""Configuration dataclasses saved next to every artifact, so a run can be reproduced.

`save_config` writes `<artifact>.config.json` (or `config.json` in a folder); `check_config`
refuses to reuse an artifact made with different settings instead of silently mixing them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .errors import UserError
from .io import read_json, write_json

C = TypeVar("C")


def config_dict(cfg: Any) -> dict:
    d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def save_config(path: str | os.PathLike, cfg: Any, kind: str) -> None:
    """Write the settings that produced an artifact, with the tool version."""
    write_json(path, {"kind": kind, "isc_qk_version": __version__, "config": config_dict(cfg)})


def load_config(path: str | os.PathLike, cls: type[C]) -> C:
    data = read_json(path)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.get("config", {}).items() if k in fields})


def check_config(path: str | os.PathLike, cfg: Any, kind: str, ignore: tuple[str, ...] = ()) -> bool:
    """True if `path` exists with the same settings; False if absent; UserError if it differs.

    Resuming with changed settings would silently mix two experiments, so it is refused with
    the names of the settings that differ.
    """
    path = Path(path)
    if not path.exists():
        return False
    old = read_json(path).get("config", {})
    new = config_dict(cfg)
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
        raise UserError(
            f"{path.parent}: existing {kind} was made with other settings ({detail}); "
            "use another output folder or delete it to start over"
        )
    return True
