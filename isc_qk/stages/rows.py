"""Resumable, chunked writing of one row per image into a .npy.

Why: precomputing backbone features (or descriptors) for a million images takes hours, so a
crash, a Ctrl-C or a `kill -9` must cost at most one chunk. The matrix is preallocated as the
artifact's ``partial.npy`` with its disk blocks reserved (`formats.npy.create`: a disk too small
for it is an error before any work), filled chunk by chunk with ordinary writes (never a
writable memory map, which dies of SIGBUS on a full disk); after every chunk the rows are
synced and ``progress.json`` (rows done + the rows whose image could not be decoded) is written
atomically. A re-run reads it and continues from there. Only when all rows are done is the
output written under its final name, so a finished file is never partial.

Images that cannot be decoded get a zero row while filling (a memmap has no holes) and are
dropped when the output is written, so ids and rows always match. Used by every per-image
stage: gist-pca, precompute, describe and the training caches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats import npy
from ..formats.atomic import read_json, write_json
from ..formats.descriptors import Descriptors, write_descriptors
from ..formats.feature_table import feature_table_paths, write_ids, write_table_rows
from .artifact import Artifact

ComputeChunk = Callable[[int, int], tuple[np.ndarray, dict[int, str]]]


@dataclass
class Filled:
    """Where the filled rows are and which inputs failed (row index -> reason)."""

    partial: Path
    n_rows: int
    bad: dict[int, str] = field(default_factory=dict)
    rows_computed: int = 0  # rows computed by this call (0 when everything was already done)

    @property
    def good(self) -> list[int]:
        return [i for i in range(self.n_rows) if i not in self.bad]

    def bad_list(self, paths: Sequence) -> list[str]:
        """'path: reason' of every row left out, for reports."""
        return [f"{paths[i]}: {why}" if not str(why).startswith(str(paths[i])) else str(why)
                for i, why in sorted(self.bad.items())]


def fill_rows(art: Artifact, n_rows: int, dim: int, dtype: str, compute: ComputeChunk, chunk: int,
              on_rows: Callable[[int], None] | None = None) -> Filled:
    """Fill rows [0, n_rows) of `art.partial` with `compute(start, stop)`, resuming after a crash.

    `compute(start, stop)` returns the (stop - start, dim) rows and a dict {row: reason} of the
    rows it could not compute (their content is ignored and written as zeros). `on_rows(k)` is
    called after each chunk with the number of rows it added (for a progress bar).
    """
    partial, progress_json = art.partial, art.progress
    done, bad = _resume_point(partial, progress_json, n_rows, dim, dtype)
    if done == 0:
        npy.create(partial, (n_rows, dim), dtype)
        bad = {}
    if on_rows and done:
        on_rows(done)
    start_done = done
    with npy.RowWriter(partial) as out:
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
                raise UserError(f"non-finite values computed for rows {done}..{stop - 1} (the model or an input is broken)")
            out.write(done, rows)
            out.sync()
            done = stop
            write_json(progress_json, {"n_rows": n_rows, "dim": dim, "dtype": dtype, "rows_done": done, "bad": bad})
            if on_rows:
                on_rows(len(rows))
    return Filled(partial, n_rows, bad, done - start_done)


def _resume_point(partial: Path, progress_json: Path, n_rows: int, dim: int, dtype: str) -> tuple[int, dict[int, str]]:
    """(rows done, unreadable rows) of an interrupted run with this shape, or (0, {}).

    Scratch that does not describe this run (another shape, a damaged or tampered progress
    file, a partial file shorter than its header says) is not an error: the run starts over.
    """
    if not (partial.exists() and progress_json.exists()):
        return 0, {}
    try:
        state = read_json(progress_json)
        done = state["rows_done"]
        bad = {int(k): str(v) for k, v in dict(state.get("bad", {})).items()}
    except (UserError, KeyError, TypeError, ValueError):
        return 0, {}
    if (state.get("n_rows"), state.get("dim"), state.get("dtype")) != (n_rows, dim, dtype) or type(done) is not int:
        return 0, {}
    found = npy.layout(partial)
    if found is None or found[0] != (n_rows, dim) or found[1] != np.dtype(dtype) or not 0 <= done <= n_rows:
        return 0, {}
    if any(not 0 <= r < done for r in bad):
        return 0, {}
    return done, bad


def no_rows_error(filled: Filled, what: str) -> UserError:
    first = next(iter(filled.bad.values()), "")
    return UserError(f"{what}: no image could be read (e.g. {first})")


def write_table(filled: Filled, ids: Sequence[str], prefix: str | os.PathLike, what: str = "") -> list[str]:
    """The filled rows as the feature table ``PREFIX.npy`` (+ ids), dropping unreadable rows.

    The ids are written first and the .npy last, so ``PREFIX.npy`` existing means finished.
    """
    npy, ids_path = feature_table_paths(prefix)
    keep = filled.good
    if not keep:
        raise no_rows_error(filled, what or str(npy))
    good_ids = [ids[i] for i in keep]
    write_ids(ids_path, good_ids)
    if not filled.bad:
        os.replace(filled.partial, npy)
        return good_ids
    src = np.load(filled.partial, mmap_mode="r")
    write_table_rows(npy, [(src, np.asarray(keep))])
    del src
    filled.partial.unlink()
    return good_ids


def read_good_rows(filled: Filled, ids: Sequence[str], what: str = "") -> Descriptors:
    """The filled rows of the readable images as float32 Descriptors (in memory)."""
    keep = filled.good
    if not keep:
        raise no_rows_error(filled, what or str(filled.partial))
    x = np.load(filled.partial, mmap_mode="r")
    out = Descriptors([ids[i] for i in keep], np.asarray(x[keep], dtype=np.float32))
    del x
    return out


def write_descriptor_rows(filled: Filled, ids: Sequence[str], out: str | os.PathLike, what: str = "") -> Descriptors:
    """The filled rows of the readable images as the per-set HDF5 `out` (official layout)."""
    desc = read_good_rows(filled, ids, what)
    write_descriptors(out, desc)
    return desc
