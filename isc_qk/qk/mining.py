"""Hard-negative mining against a table of CONSTANT descriptors, in TensorFlow on the model's device.

When the other side does not train in a phase (SSCD recipe: ``train_other_head=False``), its
descriptor of every table row is a constant of the phase (`qk.cached_side` computes them once).
A step then needs only the B x T distances and the global top-n selection: no head pass over
the wide feature table, 3x less data and ~an order of magnitude less arithmetic.

One code path for every device: `KeyTable.mine` runs the same `tf.function` over a block of
table rows that lives on the device. With the table RESIDENT (the default where it fits:
``table_device="auto"``) the block is the whole table, so a step moves nothing but the batch;
with ``"host"`` the table stays in host memory (RAM or a memory-mapped file) and is streamed
to the device in blocks of `HOST_BLOCK` rows each step (a GPU too small for the table). On a
CPU "resident" aliases the host array (zero-copy, DLPack), so it costs no second copy.

Exactness and the tie rule (the same as `qk.loss`): the n hardest non-positive pairs under the
total order (d2, flat index = batch_row * T + table_row):

1. each chunk of `chunk` rows gives its (n + P) smallest d2 (P = number of positive pairs) with
   `tf.math.top_k`, which puts the lower index first among equal values; inside a chunk the
   local index b * c + j orders pairs exactly as the global flat index does, and at most P of
   the chunk's best can be positives, so every pair of the global answer is among them;
2. the candidates of all chunks (a few thousand) are one tensor: positives are dropped, the
   rest sorted by flat index (`tf.argsort`, stable) and the n smallest d2 taken with `top_k`
   (lower position = smaller flat index first among equal d2). No NumPy merge per chunk.

The d2 that ranks the pairs is this one float32 evaluation, the same in every placement:
``d2 = max((|k|^2 - 2 q.k) + |q|^2, 0)`` with 2 q.k = (q + q).k (exact scaling) and |k|^2
computed once per phase. The loss itself recomputes the selected pairs' d2 directly
(`loss.pair_d2`), exactly as the uncached path does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..configs import FIRST_PASSES, TABLE_DEVICES
from ..errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

#: Table rows per top-k inside the device loop. Measured on 2 cores (benchmarks/step_time.py,
#: T = 1M x 256): 64k-128k rows are the fastest; the (B, chunk) distance block stays ~8 MB.
DEFAULT_CHUNK = 65536
#: Rows per host-to-device transfer when the table is not resident (``table_device="host"``).
HOST_BLOCK = 262144
NORM_BLOCK = 16384  # rows per |k|^2 pass and per copy into the resident array (small blocks: little heap kept)
MIN_COLS = 64  # the distance matmul never runs on fewer table rows (see _neg_d2)
ALIGN = 64  # TensorFlow's tensor alignment (EIGEN_MAX_ALIGN_BYTES with AVX-512)
#: "auto" keeps the table resident on a CPU when it takes at most this share of MemAvailable.
RESIDENT_SHARE = 0.8


# ----------------------------------------------------------------------------- host arrays
def aligned_empty(shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an `ALIGN`-byte boundary, so
    TensorFlow can use it in place (a misaligned buffer would be copied or refused)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + ALIGN, np.uint8)
    off = (-buf.ctypes.data) % ALIGN
    return buf[off : off + nbytes].view(dtype).reshape(shape)


def read_rows(table: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a table as an in-memory array.

    A memory-mapped .npy is read with plain file reads (`np.fromfile`), not through the
    mapping: reading a 12 GB table once must not leave 12 GB of mapped pages in the process
    (they count as its resident memory); the page cache still serves repeated reads.
    """
    stop = min(stop, table.shape[0])
    if isinstance(table, np.memmap) and table.filename and table.flags.c_contiguous and table.offset is not None:
        width = int(np.prod(table.shape[1:]))
        count = (stop - start) * width
        off = table.offset + start * width * table.dtype.itemsize
        return np.fromfile(table.filename, dtype=table.dtype, count=count, offset=off).reshape((stop - start, *table.shape[1:]))
    return np.asarray(table[start:stop])


def load_aligned(table: np.ndarray, block: int = NORM_BLOCK) -> np.ndarray:
    """The whole table copied into one aligned in-memory float32 array, block by block."""
    out = aligned_empty(table.shape, np.float32)
    for s in range(0, table.shape[0], block):
        out[s : s + block] = read_rows(table, s, s + block)
    return out


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def model_device() -> str:
    """The device the model runs on: the first GPU when there is one, else the CPU."""
    import tensorflow as tf

    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


# ----------------------------------------------------------------------------- the kernels
def _neg_d2(q2, qq, keys, kk):
    """-d2 of a (B, c) block: min(2 q.k - |k|^2 - |q|^2, 0), i.e. -max((|k|^2 - 2 q.k) + |q|^2, 0)
    bit for bit (negation is exact), the largest first for top_k.

    A block narrower than `MIN_COLS` rows is padded: measured on this CPU, a one-column matmul
    (a matrix-vector kernel) rounds some q.k differently from the same row inside a wider
    block, and a pair's d2 must not depend on the block it was computed in."""
    import tensorflow as tf

    c = tf.shape(keys)[0]
    mm2 = tf.cond(c < MIN_COLS,
                  lambda: tf.matmul(q2, tf.pad(keys, [[0, MIN_COLS - c], [0, 0]]), transpose_b=True)[:, :c],
                  lambda: tf.matmul(q2, keys, transpose_b=True))
    return tf.minimum(tf.nn.bias_add(mm2, -kk) - qq, 0.0)


_FUNCTIONS: dict = {}


def _functions(chunk: int):
    """(block_candidates, select) tf.functions for one chunk size (traced once per shape class)."""
    if chunk in _FUNCTIONS:
        return _FUNCTIONS[chunk]
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def block_candidates(q, table, kk, k, offset, total):
        """The (k) smallest d2 of every chunk of `table` (rows offset.. of a T=`total` table):
        their d2 and global flat indices batch_row * total + table_row (int64)."""
        q2 = q + q
        qq = tf.reduce_sum(tf.square(q), axis=1, keepdims=True)
        n = tf.shape(table)[0]
        b = tf.shape(q)[0]
        n_chunks = (n + chunk - 1) // chunk
        d2s = tf.TensorArray(tf.float32, size=n_chunks, infer_shape=False)
        flats = tf.TensorArray(tf.int64, size=n_chunks, infer_shape=False)
        for i in tf.range(n_chunks):
            tf.autograph.experimental.set_loop_options(parallel_iterations=2)
            s = i * chunk
            e = tf.minimum(s + chunk, n)
            c = e - s
            nd2 = _neg_d2(q2, qq, table[s:e], kk[s:e])
            vals, idx = tf.math.top_k(tf.reshape(nd2, [-1]), k=tf.minimum(k, b * c), sorted=False)
            row = tf.cast(idx // c, tf.int64)
            col = tf.cast(idx % c + s, tf.int64)
            d2s = d2s.write(i, tf.where(vals < 0.0, -vals, tf.zeros_like(vals)))  # +0.0, never -0.0
            flats = flats.write(i, row * total + offset + col)
        return d2s.concat(), flats.concat()

    @tf.function(reduce_retracing=True)
    def select(d2, flat, pos_flat, n):
        """The n smallest (d2, flat) candidates that are not positives; `pos_flat` sorted, with
        a leading sentinel -1 so it is never empty."""
        at = tf.minimum(tf.searchsorted(pos_flat, flat), tf.size(pos_flat, tf.int32) - 1)
        keep = tf.not_equal(tf.gather(pos_flat, at), flat)
        d2, flat = tf.boolean_mask(d2, keep), tf.boolean_mask(flat, keep)
        order = tf.argsort(flat, stable=True)
        d2, flat = tf.gather(d2, order), tf.gather(flat, order)
        _, sel = tf.math.top_k(-d2, k=n, sorted=True)  # lower position (= smaller flat) first among ties
        return tf.gather(flat, sel), tf.gather(d2, sel)

    _FUNCTIONS[chunk] = (block_candidates, select)
    return _FUNCTIONS[chunk]


def _recheck_functions():
    """(recheck, select): the same distance kernel over an arbitrary set of table rows `cols`
    (the int8 first pass's candidates), then the same selection."""
    if "recheck" in _FUNCTIONS:
        return _FUNCTIONS["recheck"]
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def recheck(q, keys, kk, cols, k, total):
        qq = tf.reduce_sum(tf.square(q), axis=1, keepdims=True)
        nd2 = _neg_d2(q + q, qq, keys, kk)
        c = tf.shape(keys)[0]
        vals, idx = tf.math.top_k(tf.reshape(nd2, [-1]), k=tf.minimum(k, tf.size(nd2)), sorted=False)
        flat = tf.cast(idx // c, tf.int64) * total + tf.gather(cols, idx % c)
        return tf.where(vals < 0.0, -vals, tf.zeros_like(vals)), flat

    _FUNCTIONS["recheck"] = (recheck, _functions(DEFAULT_CHUNK)[1])
    return _FUNCTIONS["recheck"]


# ----------------------------------------------------------------------------- the table
class KeyTable:
    """The other side's descriptors of every table row (T, D), constant during a phase, placed
    for mining: resident on the model's device or streamed from host memory (module docstring).

    `rows` is float32, in memory or memory-mapped; a resident CPU table aliases an aligned copy
    of it, so at most one copy of the table is ever held.
    """

    def __init__(self, rows: np.ndarray, where: str = "auto", chunk: int = DEFAULT_CHUNK,
                 block: int = HOST_BLOCK, device: str | None = None, first_pass: str = "auto") -> None:
        import tensorflow as tf

        if where not in TABLE_DEVICES:
            raise UserError(f"--table-device must be one of {', '.join(TABLE_DEVICES)}, not {where!r}")
        if first_pass not in FIRST_PASSES:
            raise UserError(f"--first-pass must be one of {', '.join(FIRST_PASSES)}, not {first_pass!r}")
        if rows.ndim != 2 or rows.dtype != np.float32:
            raise ValueError(f"cached descriptors must be a 2-D float32 array, got {rows.dtype} {rows.shape}")
        self.n, self.dim = int(rows.shape[0]), int(rows.shape[1])
        self.chunk = max(1, int(chunk))
        self.block = -(-max(1, int(block)) // self.chunk) * self.chunk  # whole chunks: the same chunks as resident
        self.device = device or model_device()
        self.nbytes = self.n * self.dim * 4
        self.host = rows
        self.table = None  # the resident tensor
        self.array = None  # on a CPU: the aligned host array the resident tensor aliases (no copy)
        self.first = None  # qk.first_pass.Int8FirstPass, where it is used
        gpu = "GPU" in self.device.upper()
        if self._use_int8(first_pass, gpu):
            from .first_pass import Int8FirstPass

            with tf.device(self.device):
                self.kk = self._squared_norms()
            self.first = Int8FirstPass(rows, self.kk, self.chunk, self.device)
            self.placement = "host, int8 first pass"
            return
        if where == "device" or (where == "auto" and (gpu or self.nbytes <= RESIDENT_SHARE * _mem_available())):
            try:
                self.table = self._resident(rows, gpu)
            except tf.errors.ResourceExhaustedError:
                if where == "device":
                    raise UserError(f"the {self.nbytes / 1e9:.1f} GB table does not fit on {self.device}; "
                                    "use --table-device host") from None
                self.table = None
        with tf.device(self.device):
            self.kk = self._squared_norms()
        if self.table is not None:
            self.host = None  # the device copy (or the aliased array it holds) is the table now
        self.placement = "resident" if self.table is not None else "host"

    def _use_int8(self, first_pass: str, gpu: bool) -> bool:
        """int8 where asked; with "auto", on a CPU that has the instructions, for a table of
        at least `first_pass.MIN_ROWS` rows (where it was measured to win)."""
        from .first_pass import MIN_ROWS, int8_available

        if first_pass == "int8":
            if gpu:
                raise UserError("--first-pass int8 runs on a CPU; the model's device is a GPU (use --first-pass auto)")
            return True
        return first_pass == "auto" and not gpu and self.n >= MIN_ROWS and int8_available(self.dim)

    def _resident(self, rows: np.ndarray, gpu: bool):
        import tensorflow as tf

        arr = load_aligned(rows)
        with tf.device("/CPU:0"):
            try:  # zero-copy: the tensor owns the aligned array through the DLPack capsule
                t = tf.experimental.dlpack.from_dlpack(arr.__dlpack__())
                aliased = True
            except Exception:  # an older TensorFlow or NumPy: one copy
                t, aliased = tf.convert_to_tensor(arr), False
        if gpu:
            with tf.device(self.device):
                return tf.identity(t)
        self.array = arr if aliased else None
        return t

    def _squared_norms(self):
        """|k|^2 of every row, once per phase (the same TF op on every block)."""
        import tensorflow as tf

        norms = tf.function(lambda x: tf.reduce_sum(tf.square(x), axis=1), reduce_retracing=True)
        step = NORM_BLOCK
        if self.table is not None:
            return tf.concat([norms(self.table[s : s + step]) for s in range(0, self.n, step)] or [tf.zeros([0])], axis=0)
        return np.concatenate([norms(tf.constant(read_rows(self.host, s, s + step))).numpy()
                               for s in range(0, self.n, step)] or [np.zeros(0, np.float32)])

    # ------------------------------------------------------------------ mining
    def mine(self, q, pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n hardest non-positive (batch row, table row) pairs, hardest first, and their d2.

        `pairs`: the (P, 2) positive pairs (checked by the caller); n: already capped at the
        number of non-positive pairs. No gradient flows (q is a constant here).
        """
        import tensorflow as tf

        t = self.n
        if n <= 0:
            return np.empty((0, 2), np.int64), np.empty(0, np.float32)
        if self.first is not None:
            with tf.device(self.device):
                return self.first.mine(tf.stop_gradient(tf.cast(q, tf.float32)), pairs, n)
        pos = np.unique(pairs[:, 0] * t + pairs[:, 1]) if len(pairs) else np.empty(0, np.int64)
        block_candidates, select = _functions(self.chunk)
        k = tf.constant(n + len(pos), tf.int32)
        total = tf.constant(t, tf.int64)
        with tf.device(self.device):
            q = tf.stop_gradient(tf.cast(q, tf.float32))
            if self.table is not None:
                d2, flat = block_candidates(q, self.table, self.kk, k, tf.constant(0, tf.int64), total)
            else:
                parts = [block_candidates(q, tf.constant(read_rows(self.host, s, s + self.block)),
                                          tf.constant(self.kk[s : s + self.block]), k, tf.constant(s, tf.int64), total)
                         for s in range(0, t, self.block)]
                d2, flat = tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)
            sel_flat, sel_d2 = select(d2, flat, tf.constant(np.concatenate([[-1], pos]).astype(np.int64)),
                                      tf.constant(n, tf.int32))
        sel_flat = sel_flat.numpy()
        return np.stack([sel_flat // t, sel_flat % t], axis=1).astype(np.int64), sel_d2.numpy()

    def rows(self, idx: np.ndarray) -> "tf.Tensor":
        """The cached descriptors of table rows `idx` (float32 constants, on the device)."""
        import tensorflow as tf

        from .first_pass import take_rows

        with tf.device(self.device):
            if self.table is not None:
                return tf.gather(self.table, tf.constant(np.asarray(idx, np.int64)))
            return tf.constant(take_rows(self.host, np.asarray(idx, np.int64)))

    def describe(self) -> str:
        """One line for reports: where the table is and how big."""
        return f"cached {self.n:,} x {self.dim} float32 ({self.nbytes / 1e9:.2f} GB), {self.placement} on {self.device}"

    def close(self) -> None:
        """Stop the first pass's threads (the table itself goes with the object)."""
        if self.first is not None:
            self.first.close()


def table_fits(nbytes: int) -> bool:
    """Would "auto" keep a table of `nbytes` resident on this CPU now (for messages/benchmarks)."""
    return nbytes <= RESIDENT_SHARE * _mem_available()


__all__ = ["KeyTable", "DEFAULT_CHUNK", "FIRST_PASSES", "TABLE_DEVICES", "aligned_empty", "load_aligned", "read_rows", "model_device",
           "table_fits", "os"]
