"""Image ids: the file name without directory and image suffix (the ISC2021 convention)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_id(name: str | bytes | os.PathLike) -> str:
    """The id of an image: its file name without directory and without an image suffix."""
    if isinstance(name, bytes):
        name = name.decode("ascii")
    base = os.path.basename(os.fspath(name))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_SUFFIXES else base


def check_unique(ids: Sequence[str], what: str) -> None:
    """Refuse duplicate ids: a duplicate would silently shadow another image's descriptor."""
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise UserError(f"{what}: duplicate id {dup!r}")


def ascii_ids(ids: Sequence[str], what: str) -> np.ndarray:
    """Ids as ASCII byte strings (the HDF5 layouts); a non-ASCII id is named in the error."""
    out = []
    for i in ids:
        try:
            out.append(i.encode("ascii"))
        except UnicodeEncodeError:
            raise UserError(f"{what}: id {i!r} is not ASCII (ISC2021 files store ASCII ids); rename the file") from None
    return np.array(out, dtype=object)
