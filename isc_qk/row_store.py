"""Resumable, chunked writing of one row per image into a memory-mapped .npy.

Why: precomputing backbone features (or descriptors) for a million images takes hours, so a
crash, a Ctrl-C or a `kill -9` must cost at most one chunk. The matrix is preallocated as
``PARTIAL.npy`` with `np.lib.format.open_memmap`, filled chunk by chunk; after every chunk the
memmap is flushed and a small progress JSON (rows done + the rows whose image could not be
decoded) is written atomically. A re-run reads the JSON and continues from there. Only when all
rows are done is the artifact moved under its final name, so a finished file is never partial.

Images that cannot be decoded get a zero row while filling (a memmap has no holes) and are
dropped when the artifact is finalised, so ids and rows always match.

Feature-table names and reading: `isc_qk.io.feature_table_paths` / `open_feature_table`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import atomic_path, check_unique, read_json, write_ids, write_json
from .io import feature_table_paths as table_paths  # noqa: F401  (the format lives in io)
from .io import open_feature_table as open_table  # noqa: F401

COPY_CHUNK = 65536  # rows copied at a time when compacting or merging


# --------------------------------------------------------------------------- names
def side_path(prefix: str | os.PathLike, what: str) -> Path:
    """A file that belongs to a table, e.g. side_path(P, "config.json") -> ``P.config.json``."""
    s = os.fspath(prefix)
    if s.endswith(".npy"):
        s = s[:-4]
    return Path(f"{s}.{what}")


# --------------------------------------------------------------------------- filling
@dataclass
class FillResult:
    """Where the filled rows are and which inputs failed (row index -> reason)."""

    partial: Path
    n_rows: int
    bad: dict[int, str] = field(default_factory=dict)
    rows_computed: int = 0  # rows computed by this call (0 when everything was already done)


ComputeChunk = Callable[[int, int], tuple[np.ndarray, dict[int, str]]]


def fill_rows(
    partial: Path,
    progress_json: Path,
    n_rows: int,
    dim: int,
    dtype: str,
    compute: ComputeChunk,
    chunk: int,
    on_rows: Callable[[int], None] | None = None,
) -> FillResult:
    """Fill rows [0, n_rows) of `partial` with `compute(start, stop)`, resuming after a crash.

    `compute(start, stop)` returns the (stop - start, dim) rows and a dict {row: reason} of the
    rows it could not compute (their content is ignored and written as zeros). `on_rows(k)` is
    called after each chunk with the number of rows it added (for a progress bar).
    """
    done, bad = 0, {}
    if partial.exists() and progress_json.exists():
        state = read_json(progress_json)
        if state.get("n_rows") == n_rows and state.get("dim") == dim and state.get("dtype") == dtype:
            done = int(state["rows_done"])
            bad = {int(k): v for k, v in state.get("bad", {}).items()}
    if done == 0:
        partial.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(n_rows, dim))
    else:
        mm = np.load(partial, mmap_mode="r+")
        if mm.shape != (n_rows, dim) or mm.dtype != np.dtype(dtype):
            raise UserError(f"{partial}: partial file does not match its progress record; delete it to start over")
    if on_rows and done:
        on_rows(done)
    start_done = done
    while done < n_rows:
        stop = min(done + chunk, n_rows)
        rows, failed = compute(done, stop)
        rows = np.asarray(rows)
        if rows.shape != (stop - done, dim):
            raise ValueError(f"compute({done}, {stop}) returned shape {rows.shape}, expected {(stop - done, dim)}")
        if failed:
            rows = rows.copy()
            for r in failed:
                rows[r - done] = 0
            bad.update(failed)
        if not np.isfinite(rows).all():
            raise UserError(f"non-finite values computed for rows {done}..{stop - 1} (model or input is broken)")
        mm[done:stop] = rows
        mm.flush()
        done = stop
        write_json(progress_json, {"n_rows": n_rows, "dim": dim, "dtype": dtype, "rows_done": done, "bad": bad})
        if on_rows:
            on_rows(len(rows))
    del mm
    return FillResult(partial, n_rows, bad, done - start_done)


def finalize_table(result: FillResult, ids: Sequence[str], prefix: str | os.PathLike) -> list[str]:
    """Move a completely filled partial file to ``PREFIX.npy`` (+ ids), dropping bad rows.

    The ids are written first and the .npy last, so ``PREFIX.npy`` existing means finished.
    """
    npy, ids_path = table_paths(prefix)
    keep = [i for i in range(result.n_rows) if i not in result.bad]
    good_ids = [ids[i] for i in keep]
    if not good_ids:
        raise UserError(f"{npy}: no image could be read, nothing to write")
    write_ids(ids_path, good_ids)
    if not result.bad:
        os.replace(result.partial, npy)
        return good_ids
    src = np.load(result.partial, mmap_mode="r")
    keep_arr = np.asarray(keep)
    with atomic_path(npy) as tmp:
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(len(keep), src.shape[1]))
        for s in range(0, len(keep), COPY_CHUNK):
            dst[s : s + COPY_CHUNK] = src[keep_arr[s : s + COPY_CHUNK]]
        dst.flush()
        del dst
    del src
    result.partial.unlink()
    return good_ids


def concat_tables(prefixes: Sequence[str], out_prefix: str | os.PathLike) -> tuple[list[str], int]:
    """Concatenate finished tables in the given order into ``OUT.npy`` + ids (streaming)."""
    parts = [open_table(p) for p in prefixes]
    dims = {x.shape[1] for _, x in parts}
    dtypes = {x.dtype for _, x in parts}
    if len(dims) != 1 or len(dtypes) != 1:
        raise UserError(f"{out_prefix}: shards differ in width or dtype ({sorted(dims)}, {sorted(map(str, dtypes))})")
    ids = [i for part_ids, _ in parts for i in part_ids]
    check_unique(ids, f"{out_prefix} (merged shards)")
    npy, ids_path = table_paths(out_prefix)
    total = sum(x.shape[0] for _, x in parts)
    write_ids(ids_path, ids)
    with atomic_path(npy) as tmp:
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtypes.pop(), shape=(total, dims.pop()))
        row = 0
        for _, x in parts:
            for s in range(0, x.shape[0], COPY_CHUNK):
                block = x[s : s + COPY_CHUNK]
                dst[row : row + len(block)] = block
                row += len(block)
        dst.flush()
        del dst
    return ids, total
