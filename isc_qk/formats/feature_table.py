"""Feature tables: ``PREFIX.npy`` (float16 or float32, n x D, memory-mappable) + ``PREFIX.ids.txt``.

Precomputed frozen-side backbone features (one row per image, the head input) and cached
per-image vectors. The .npy is written last, so ``PREFIX.npy`` existing means the table is
finished; its sidecars (``PREFIX.config.json`` ...) are the stage layer's business.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import npy
from .atomic import atomic_path
from .ids import check_ids

TABLE_DTYPES = ("float16", "float32")


def strip_npy(prefix: str | os.PathLike) -> str:
    """The prefix without a trailing ``.npy`` (users may name either)."""
    s = os.fspath(prefix)
    return s[:-4] if s.endswith(".npy") else s


def feature_table_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """(``PREFIX.npy``, ``PREFIX.ids.txt``). Built by appending, so a prefix with a dot
    (``feats.shard-0-of-4``) keeps its name; a trailing ``.npy`` on the prefix is ignored."""
    s = strip_npy(prefix)
    return Path(s + ".npy"), Path(s + ".ids.txt")


def is_feature_table(prefix: str | os.PathLike) -> bool:
    return feature_table_paths(prefix)[0].is_file()


def write_ids(path: str | os.PathLike, ids: Sequence[str]) -> None:
    """One id per line (ids that would not read back unchanged are refused, `ids.check_ids`)."""
    check_ids(ids, str(path))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids), encoding="ascii")


def read_ids(path: str | os.PathLike) -> list[str]:
    """The ids of ``PREFIX.ids.txt``, one per line, each a valid unique image id."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not an ids file (it holds non-ASCII bytes)") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # CRLF from an editor is fine
    if lines and lines[-1] == "":
        lines.pop()
    check_ids(lines, str(path))
    return lines


def open_feature_table(prefix: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Memory-map a finished feature table read-only; its ids must match its rows one to one."""
    npy_file, ids_path = feature_table_paths(prefix)
    if not npy_file.is_file():
        raise UserError(f"{npy_file}: feature table not found (run `isc-qk precompute` first)")
    try:
        x = np.load(npy_file, mmap_mode="r")
    except (ValueError, EOFError, OSError, SyntaxError) as e:  # empty, truncated, pickled, not .npy
        raise UserError(f"{npy_file}: not a valid .npy file ({' '.join(str(e).split()) or type(e).__name__})") from None
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise UserError(f"{npy_file}: expected a 2-D table, got shape {getattr(x, 'shape', None)}")
    if x.dtype.name not in TABLE_DTYPES:
        raise UserError(f"{npy_file}: a feature table holds float16 or float32, not {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"{npy_file}: empty feature table (shape {x.shape})")
    ids = read_ids(ids_path)
    if len(ids) != x.shape[0]:
        raise UserError(f"{npy_file}: {x.shape[0]} rows but {len(ids)} ids in {ids_path}")
    return ids, x


COPY_CHUNK = 65536  # rows copied at a time when compacting or concatenating


def write_table_rows(npy_path: str | os.PathLike, sources: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> int:
    """Stream rows into a new ``.npy`` atomically: each source is (array, row indices or None = all).

    Used to drop unreadable rows from a filled table and to concatenate shard tables without
    holding a million rows in memory. The file's blocks are reserved first and rows are written
    with ordinary writes (`formats.npy`), so a full disk is an OSError, never a SIGBUS.
    Returns the number of rows written.
    """
    total = sum(len(x) if rows is None else len(rows) for x, rows in sources)
    widths = {x.shape[1] for x, _ in sources}
    dtypes = {np.dtype(x.dtype) for x, _ in sources}
    if len(widths) != 1 or len(dtypes) != 1:
        raise UserError(f"{npy_path}: parts differ in width or dtype ({sorted(widths)}, {sorted(map(str, dtypes))})")
    with atomic_path(npy_path) as tmp:
        npy.create(tmp, (total, widths.pop()), dtypes.pop())
        at = 0
        with npy.RowWriter(tmp) as dst:
            for x, rows in sources:
                n = len(x) if rows is None else len(rows)
                for s in range(0, n, COPY_CHUNK):
                    block = x[s : s + COPY_CHUNK] if rows is None else x[rows[s : s + COPY_CHUNK]]
                    dst.write(at, np.asarray(block))
                    at += len(block)
            dst.sync()
    return total


def concat_tables(prefixes: Sequence[str | os.PathLike], target: str | os.PathLike) -> int:
    """Concatenate finished tables (in order) into the table ``target`` (ids unique across them):
    the ids first, the .npy last (its existence means finished). Returns the number of rows."""
    parts = [open_feature_table(p) for p in prefixes]
    ids = [i for part_ids, _ in parts for i in part_ids]
    check_ids(ids, f"{strip_npy(target)} (merged shards)")
    npy_path, ids_path = feature_table_paths(target)
    write_ids(ids_path, ids)
    rows = write_table_rows(npy_path, [(x, None) for _, x in parts])
    del parts
    return rows
