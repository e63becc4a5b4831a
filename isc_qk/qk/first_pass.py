"""An exact int8 first pass for mining on a CPU: the evaluation's prefilter finds every pair
that can be among the n hardest, the float32 mining kernel ranks those alone.

Why: on a CPU with int8 dot-product instructions (AVX-512 VNNI, AMX...) the B x T distance
pass is the whole cost of a cached step, and an int8 matmul does 4x the multiply-adds per
second on 1/4 of the memory traffic. The evaluation already has such a pass with a PROVEN
error bound (`evaluation.prefilter`: `Scanner.candidates(xq, tau)` returns a superset of the
pairs whose float32 d2 can be <= tau, for ANY float32 evaluation of d2); it is reused as is.

Exactness. Let tau be any threshold, C the considered pairs (every batch row x every table row
that is a candidate for some batch row) and v the n-th smallest d2 of the non-positive pairs
of C under the order (d2, flat index), d2 computed by the same kernel as `qk.mining`. If
v <= tau, every pair outside C is no candidate, so its d2 > tau >= v: it comes after the n
selected, which are therefore exactly the global n hardest. Otherwise the pass is repeated
with tau = v; the new C holds the old n best (their d2 <= v), so then v <= tau. tau itself
is an ESTIMATE, from the exact float32 pass over a fixed 1/`SUBSET_STRIDE` subset of the rows:
its ceil(`SAFETY` n / SUBSET_STRIDE)-th smallest non-positive d2, below which ~SAFETY x n pairs
of the whole table are expected. Correctness never depends on it (a low estimate costs one more
scan), only the number of candidates does.

The float32 rows stay in host memory (RAM or the memory-mapped cache): the first pass holds
the int8 tables and bound terms (~0.7 GB per 1M x 256 rows, less than the 1.02 GB float32 table
a resident table needs) plus the subset; each step reads only its candidates' rows.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import UserError

SUBSET_STRIDE = 64  # every 64th row is in the exact subset that estimates tau
SAFETY = 3.0  # tau is where ~3 n pairs are expected: a second scan is rarely needed
SCAN_BLOCK = 1 << 18  # rows per prefilter.Scanner, prepared from one in-memory block at a time (256 MB)
MIN_RECHECK_ROWS = 64  # the recheck matmul never runs narrower (a 1-column matmul rounds otherwise)
#: "auto" uses the int8 first pass from this many rows (benchmarks/step_time.py --shape sscd:
#: below it the subset pass, the scan's per-tile overhead and the recheck eat the gain)
MIN_ROWS = 262144


def int8_available(dim: int) -> bool:
    """The CPU has int8 dot-product instructions and onnxruntime's exact int8 kernel passes its check."""
    from ..evaluation import prefilter

    return prefilter.has_int8_dot() and prefilter.kernel_for("int8", dim) is not None


def take_rows(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` (sorted, unique) of a host table as float32.

    A memory-mapped .npy is read with one positioned read per run of consecutive rows, not
    through the mapping: measured, 2,314 random rows of a 1 GB mapped table left ~0.9 GB of its
    pages mapped in the process (the kernel maps the neighbours of every touched page).
    """
    idx = np.asarray(idx, np.int64)
    if not (isinstance(table, np.memmap) and table.filename and table.flags.c_contiguous and hasattr(os, "preadv")):
        return np.asarray(table[idx], np.float32)
    width = int(table.shape[1])
    out = np.empty((len(idx), width), table.dtype)
    row_bytes = width * table.dtype.itemsize
    starts = np.flatnonzero(np.diff(idx, prepend=-2) != 1)  # first position of every run
    ends = np.append(starts[1:], len(idx))
    with open(table.filename, "rb", buffering=0) as fh:
        for a, b in zip(starts.tolist(), ends.tolist()):
            want = (b - a) * row_bytes
            if os.preadv(fh.fileno(), [memoryview(out[a:b]).cast("B")], table.offset + int(idx[a]) * row_bytes) != want:
                raise UserError(f"{table.filename}: file shorter than its header says")
    return out.astype(np.float32, copy=False)


class Int8FirstPass:
    """The int8 scanners of a host table, its exact subset, and `mine` (module docstring)."""

    def __init__(self, rows: np.ndarray, kk: np.ndarray, chunk: int, device: str, threads: int | None = None) -> None:
        import tensorflow as tf

        from ..evaluation.prefilter import Scanner, default_threads
        from .mining import read_rows

        if not int8_available(rows.shape[1]):
            raise UserError("--first-pass int8 needs a CPU with int8 dot-product instructions and onnxruntime")
        self.rows, self.kk, self.chunk, self.device = rows, kk, chunk, device
        self.n = int(rows.shape[0])
        t0 = time.perf_counter()
        # one single-threaded scanner per block of rows, the blocks scanned in parallel: a Scanner
        # parallelises over blocks of 1024 queries, and a step has one block of B = 32
        self.scanners = [(s, Scanner(read_rows(rows, s, s + SCAN_BLOCK), "int8", 1))
                         for s in range(0, self.n, SCAN_BLOCK)]
        self.pool = ThreadPoolExecutor(threads or default_threads())
        self.subset = np.arange(0, self.n, SUBSET_STRIDE, dtype=np.int64)
        with tf.device(device):
            self.sub = tf.constant(take_rows(rows, self.subset))
            self.sub_kk = tf.constant(kk[self.subset])
        self.prepare_s = time.perf_counter() - t0
        self.last: dict = {}  # statistics of the last call (candidates, rows, retries)

    def close(self) -> None:
        self.pool.shutdown()
        for _, sc in self.scanners:
            sc.close()

    def _tau(self, q, pairs: np.ndarray, n: int) -> float:
        """The estimate of tau: the ceil(SAFETY n / SUBSET_STRIDE)-th smallest non-positive d2 of
        the batch against the subset (exact float32); +inf if the subset is too small."""
        import tensorflow as tf

        from .mining import _functions

        block_candidates, select = _functions(self.chunk)
        s = len(self.subset)
        at = np.searchsorted(self.subset, pairs[:, 1])
        hit = (at < s) & (self.subset[np.minimum(at, s - 1)] == pairs[:, 1])
        pos = np.unique(pairs[hit, 0] * s + at[hit])
        m = int(np.ceil(SAFETY * n * s / self.n))
        if m > len(q) * s - len(pos):
            return float("inf")
        d2, flat = block_candidates(q, self.sub, self.sub_kk, tf.constant(m + len(pos), tf.int32),
                                    tf.constant(0, tf.int64), tf.constant(s, tf.int64))
        _, sel_d2 = select(d2, flat, tf.constant(np.concatenate([[-1], pos]).astype(np.int64)), tf.constant(m, tf.int32))
        return float(sel_d2.numpy()[-1])

    def _candidate_rows(self, qn: np.ndarray, tau: float, least: int) -> np.ndarray:
        """Every table row that is a candidate for some batch row, and at least `least` rows
        (extra real rows only add exact pairs to the considered set: harmless)."""
        if not np.isfinite(tau):
            return np.arange(self.n, dtype=np.int64)
        parts = list(self.pool.map(lambda block: block[0] + block[1].candidates(qn, tau)[1], self.scanners))
        rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        if len(rows) < least:
            rows = np.union1d(rows, np.arange(min(self.n, least), dtype=np.int64))
            rows = np.union1d(rows, np.arange(self.n - min(self.n, least - len(rows)), self.n)) if len(rows) < least else rows
        return rows

    def mine(self, q, pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n hardest non-positive pairs and their d2, exactly as `KeyTable.mine` finds them."""
        import tensorflow as tf

        from .mining import _recheck_functions

        t, b = self.n, int(q.shape[0])
        pos = np.unique(pairs[:, 0] * t + pairs[:, 1]) if len(pairs) else np.empty(0, np.int64)
        recheck, select = _recheck_functions()
        with tf.device(self.device):
            tau = self._tau(q, pairs, n)
            qn = q.numpy()
            # enough rows that the considered set holds n non-positive pairs (B rows - P positives)
            least = max(MIN_RECHECK_ROWS, -(-(n + len(pos)) // b) + 1)
            for attempt in range(3):
                rows = self._candidate_rows(qn, tau, least)
                d2, flat = recheck(q, tf.constant(take_rows(self.rows, rows)), tf.constant(self.kk[rows]),
                                   tf.constant(rows), tf.constant(n + len(pos), tf.int32), tf.constant(t, tf.int64))
                sel_flat, sel_d2 = select(d2, flat, tf.constant(np.concatenate([[-1], pos]).astype(np.int64)),
                                          tf.constant(n, tf.int32))
                sel_d2 = sel_d2.numpy()
                v = float(sel_d2[-1])
                if v <= tau:
                    break
                tau = v  # the candidates of tau = v hold these n: the next pass is final
            else:  # unreachable by the argument above; never return a selection that is not proven
                raise RuntimeError("int8 first pass: the selection did not settle")
        self.last = {"tau": tau, "rows": len(rows), "retries": attempt, "batch": b}
        sel_flat = sel_flat.numpy()
        return np.stack([sel_flat // t, sel_flat % t], axis=1).astype(np.int64), sel_d2
