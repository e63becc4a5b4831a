"""The frozen other side's descriptors of every table row, computed once at the start of a phase.

Why: in a phase that trains only its own side (``train_other_head=False``, the SSCD recipe) the
other head does not change, so head(table row) is a constant of the phase. Computing it once
(T x 256 float32) replaces a head pass over the whole (T x 768 float16) feature table at every
step; mining then needs only the distances (`qk.mining`). The K phase benefits most: its table
holds the Q features of every edited copy (8M rows at DISC21 size with 8 copies).

The cache is an artifact like any per-image stage (`stages.artifact` + `stages.rows`): float32
``OUT/cache/side-<q|k>-<head fingerprint>.npy`` (+ ids, record, report), filled in chunks of
`CHUNK` rows, resumable after Ctrl-C or ``kill -9`` (a re-run continues at the last finished
chunk and the result is byte-identical: every chunk is computed with the same boundaries). The
feature table is read with plain file reads (`mining.read_rows`), so building the cache does not
map the whole table into the process; rows that hold NaN or inf are refused with the table named.

float32, not float16: the cached values are exactly what the uncached path computes and feeds
the loss (head output in float32); rounding them to float16 would change the loss (~1e-3) and
the selection. A 1M-row cache is 1.02 GB.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats.feature_table import feature_table_paths, open_feature_table, read_ids
from ..stages import fingerprint
from ..stages.artifact import Artifact
from ..stages.rows import fill_rows, write_table
from ..ui import ticker
from .mining import read_rows
from .precompute import table_input

KIND = "qk-cached-side"
CHUNK = 8192  # feature rows per head pass (and the resume granularity): small blocks, little heap left behind
DTYPE = "float32"


@dataclass
class CachedSideConfig:
    """What the cached descriptors depend on: whose head, its weights, and the table's shape."""

    side: str = "k"  # whose descriptors: the OTHER side of the phase ("k" in train-q)
    head: str = ""  # fingerprint of that head's weights
    rows: int = 0
    width: int = 0
    dim: int = 0
    dtype: str = DTYPE
    chunk: int = CHUNK


def cache_prefix(cache_dir: Path, side: str, head_fp: str) -> Path:
    return Path(cache_dir) / f"side-{side}-{head_fp}"


def head_fingerprint(head) -> str:
    return fingerprint.of_arrays([w.numpy() for w in head.weights])


def cached_side(head, side: str, table: np.ndarray, table_prefix: str | os.PathLike, cache_dir: Path,
                progress: bool = True) -> Path:
    """Build (or resume, or reuse) the cache of `head` over every row of `table`; its prefix.

    Other caches of this side in `cache_dir` (another head: an earlier run's) are removed first:
    a cache is only ever useful to the phase that made it.
    """
    import tensorflow as tf

    head_fp = head_fingerprint(head)
    prefix = cache_prefix(cache_dir, side, head_fp)
    _remove_stale(cache_dir, side, prefix)
    n, width = int(table.shape[0]), int(table.shape[1])
    dim = int(head.output_shape[-1])
    cfg = CachedSideConfig(side=side, head=head_fp, rows=n, width=width, dim=dim)
    ids_txt = feature_table_paths(table_prefix)[1]
    inputs = [table_input("table", table_prefix)]
    art = Artifact(prefix, KIND, layout="prefix", stage="cache")
    try:
        art.check_record(cfg, inputs)
    except UserError:  # made from another table (or by another version): start it over
        _remove_stale(cache_dir, side, None)
    forward = tf.function(lambda x: head(tf.cast(x, tf.float32), training=False), reduce_retracing=True)
    with art.open(cfg, inputs) as state:
        if state.done:
            return prefix
        with ticker(progress, n, f"{side.upper()} descriptors of the table (once per phase)") as tick:

            def compute(start: int, stop: int):
                x = read_rows(table, start, stop)
                if not np.isfinite(x).all():
                    raise UserError(f"{table_prefix}: the feature table holds NaN or inf values; re-run its precompute")
                return forward(tf.constant(x)).numpy().astype(np.float32, copy=False), {}

            filled = fill_rows(art, n, dim, DTYPE, compute, CHUNK, tick)
        write_table(filled, read_ids(ids_txt) if ids_txt.is_file() else [str(i) for i in range(n)], prefix,
                    f"{side.upper()} descriptors")
        art.finish({"rows": n, "dim": dim, "computed": filled.rows_computed})
    return prefix


def open_cached_side(prefix: Path) -> np.ndarray:
    """The finished cache, memory-mapped (float32, rows aligned with the feature table's)."""
    _, x = open_feature_table(prefix)
    if x.dtype != np.float32:
        raise UserError(f"{prefix}: cached descriptors must be float32, found {x.dtype}")
    return x


def remove_cached_side(cache_dir: Path, side: str) -> None:
    """Drop this side's caches (a finished phase no longer needs them; they are GBs at scale),
    and the cache folder if nothing else is left in it."""
    _remove_stale(cache_dir, side, None)
    try:
        Path(cache_dir).rmdir()
    except OSError:  # not empty (start vectors...) or not there
        pass


def _remove_stale(cache_dir: Path, side: str, keep: Path | None) -> None:
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return
    for p in cache_dir.glob(f"side-{side}-*"):
        if keep is not None and p.name.startswith(keep.name + "."):
            continue
        p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p, ignore_errors=True)
