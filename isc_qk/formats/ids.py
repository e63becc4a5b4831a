"""Image ids: the file name without directory and image suffix (the ISC2021 convention).

An id is written to several files (HDF5 ``image_names`` as ASCII, ``PREFIX.ids.txt`` one per
line, CSV manifests and ground truths) and read back from them; an id that would come back
different (a newline splits a line, a NUL or a control character ends or garbles it, spaces
are stripped from CSV cells, a trailing ``.jpg`` is stripped by the readers) would silently
pair an image with another image's row. `check_ids` refuses those, all of them named on one
line, before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Formats Pillow reads that the ISC2021 convention (and this tool) does not: listed, not read
OTHER_IMAGE_SUFFIXES = (".tif", ".tiff", ".webp", ".bmp", ".gif", ".jp2", ".j2k", ".jpx", ".jfif", ".jpe",
                        ".heic", ".heif", ".avif", ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga", ".dib",
                        ".pcx", ".psd", ".jxl")
SHOWN = 5  # offending ids named in one error line


def image_id(name: str | bytes | os.PathLike) -> str:
    """The id of an image: its file name without directory and without an image suffix."""
    if isinstance(name, bytes):
        name = name.decode("ascii")
    base = os.path.basename(os.fspath(name))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_SUFFIXES else base


def id_problem(i: object) -> str | None:
    """Why `i` cannot be an id that every file format gives back unchanged, or None."""
    if not isinstance(i, str):
        return f"not text ({type(i).__name__})"
    if i == "":
        return "empty"
    if not i.isascii():
        return "not ASCII (ISC2021 files store ASCII ids)"
    if any(ord(c) < 32 or ord(c) == 127 for c in i):
        return "holds a control character (newline, tab, NUL...)"
    if i != i.strip():
        return "starts or ends with a space"
    if image_id(i) != i:
        return f"reads back as {image_id(i)!r} (a directory or image suffix inside the id)"
    return None


def _shown(items: Sequence[str]) -> str:
    return "; ".join(items[:SHOWN]) + (f"; ... ({len(items)} in all)" if len(items) > SHOWN else "")


def check_ids(ids: Iterable[object], what: str, unique: bool = True, names: Sequence[str] | None = None) -> None:
    """Refuse ids that would not survive a round trip through the tool's files, and duplicates.

    `names`: what to show for each id (e.g. the file names of an image folder) instead of it.
    """
    ids = list(ids)
    shown = list(names) if names is not None else [repr(i) for i in ids]
    bad = [f"{n} ({why})" for i, n in zip(ids, shown) if (why := id_problem(i))]
    if bad:
        raise UserError(f"{what}: {len(bad)} name(s) cannot be image ids: {_shown(bad)}; rename them")
    if unique:
        check_unique(ids, what, shown)


def check_unique(ids: Sequence[str], what: str, names: Sequence[str] | None = None) -> None:
    """Refuse duplicate ids: a duplicate would silently shadow another image's descriptor."""
    if len(set(ids)) == len(ids):
        return
    shown = list(names) if names is not None else [repr(i) for i in ids]
    groups: dict[str, list[str]] = {}
    for i, n in zip(ids, shown):
        groups.setdefault(i, []).append(n)
    dups = [" and ".join(g) + (f" (one id {i!r})" if names is not None else "") for i, g in groups.items() if len(g) > 1]
    if names is None:
        dups = [repr(i) for i, g in groups.items() if len(g) > 1]
        raise UserError(f"{what}: duplicate id {dups[0]}" + (f" (and {len(dups) - 1} more)" if len(dups) > 1 else ""))
    raise UserError(f"{what}: {len(dups)} id(s) shared by two files: {_shown(dups)}; rename them")


def ascii_ids(ids: Sequence[str], what: str) -> np.ndarray:
    """Ids as ASCII byte strings (the HDF5 layouts); an id that would not read back is refused."""
    check_ids(ids, what, unique=False)
    return np.array([i.encode("ascii") for i in ids], dtype=object)
