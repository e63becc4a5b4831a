"""The QK Iteration loss: binary cross-entropy over pairs, with global hard-negative mining.

Paper eq. 1-4, with d2 the squared L2 distance between a query and a key descriptor:

    P = exp(-d2 / tau)
    L_pos = sum over positive pairs  of -log P       / B          (= d2 / tau)
    L_neg = sum over top B*M negatives of -log(1 - P) / (B * M)   (hardest = smallest d2)
    L     = w_pos * L_pos + w_neg * L_neg

"Top B*M negatives" are chosen GLOBALLY over the whole (B, T) matrix of batch rows x table
rows, not M per row. Ties (equal d2) are broken by the smaller flat index
``batch_row * T + table_row`` everywhere, so every implementation selects the same pairs.

The formula is `pair_loss` (distances of the selected pairs -> loss, its parts and statistics):
every training path calls it - the single-device step (`qk_loss`), the in-batch comparison
(`in_batch_loss`) and the multi-device step (`qk.distribute`) - so they cannot drift apart.
How the pairs are selected differs:

* `naive_qk_loss`: the reference. The caller has run the head over the whole table with
  autograd on; memory grows with T (all activations are kept).
* `qk_loss`: the scalable one. A no-grad chunked pass finds the hardest negatives
  (`mine_hard_negatives`), then the head is re-run WITH gradient on the selected table rows
  only. Rows that are not selected contribute nothing to the loss, so their gradient is zero
  in the naive version too: both give the same loss and the same gradients.
* `cached_qk_loss`: `qk_loss` when the other head does not train in the phase: its descriptors
  of every table row are constants, computed once (`qk.cached_side`), and the mining is the
  distance pass alone, in TensorFlow on the model's device (`qk.mining`, same tie rule).
* `in_batch_loss`: the SimCLR-style comparison, negatives from the batch only.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING

import numpy as np

from ..configs import LossConfig
from ..errors import UserError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from .mining import KeyTable

#: Floor on d2 / tau in the negative term: -log(1 - exp(-x)) is +inf at x = 0 (a negative
#: identical to the query); the floor caps that term at ~13.8 instead of producing inf/NaN.
NEG_X_FLOOR = 1e-6

#: Table rows per mining chunk. Measured on 2 cores (benchmarks/step_time.py --sweep-chunks):
#: 8k-16k rows is the fastest, and the per-chunk activations (~25 KB per row with a
#: 1536 -> 1024 -> 256 head) stay ~0.2 GB, so a 1M-row table's step fits in 1.5x its size.
DEFAULT_CHUNK = 8192


# ----------------------------------------------------------------------------- the formula
def _log1mexp(x: "tf.Tensor") -> "tf.Tensor":
    """log(1 - exp(-x)) for x > 0, accurate for small and large x (Maechler 2012)."""
    import tensorflow as tf

    small = x <= np.log(2.0)
    a = tf.where(small, x, tf.ones_like(x))  # keep the unused branch finite (NaN-free grads)
    b = tf.where(small, tf.ones_like(x), x)
    return tf.where(small, tf.math.log(-tf.math.expm1(-a)), tf.math.log1p(-tf.exp(-b)))


def pair_loss(d2_pos, d2_neg, batch_size: int, cfg: LossConfig) -> tuple["tf.Tensor", "tf.Tensor", "tf.Tensor"]:
    """THE loss (paper eq. 1-4) from the squared distances of the selected pairs.

    Returns (L, L_pos, L_neg) with L_pos = sum(d2_pos) / (tau B) (= sum of -log P over the
    positives / B), L_neg = sum of -log(1 - P) over the negatives / (B M), L = w_pos L_pos +
    w_neg L_neg. Scalars, float32, differentiable in the distances.
    """
    import tensorflow as tf

    d2_pos = tf.cast(d2_pos, tf.float32)
    d2_neg = tf.cast(d2_neg, tf.float32)
    l_pos = tf.reduce_sum(d2_pos) / (cfg.tau * batch_size)  # -log exp(-d2/tau) = d2/tau
    x = tf.maximum(d2_neg / cfg.tau, NEG_X_FLOOR)
    l_neg = -tf.reduce_sum(_log1mexp(x)) / float(batch_size * cfg.m)
    return cfg.w_pos * l_pos + cfg.w_neg * l_neg, l_pos, l_neg


def bce_loss(d2_pos, d2_neg, batch_size: int, cfg: LossConfig) -> "tf.Tensor":
    """L alone (paper eq. 4), a scalar float32 tensor."""
    return pair_loss(d2_pos, d2_neg, batch_size, cfg)[0]


def pair_d2(q: "tf.Tensor", k: "tf.Tensor", qi, kj) -> "tf.Tensor":
    """Squared distances of the listed (q row, k row) pairs, computed directly (exact, >= 0)."""
    import tensorflow as tf

    diff = tf.gather(q, qi) - tf.gather(k, kj)
    return tf.reduce_sum(tf.square(diff), axis=1)


def loss_stats(loss, l_pos, l_neg, d2_pos, d2_neg, n_rows: int, mine_s: float) -> dict:
    """The numbers logged per step (losses.csv): loss parts, distance means, pair counts."""
    d2_pos, d2_neg = np.asarray(d2_pos), np.asarray(d2_neg)
    return {
        "loss": float(loss),
        "loss_pos": float(l_pos),
        "loss_neg": float(l_neg),
        "d2_pos_mean": float(d2_pos.mean()) if d2_pos.size else float("nan"),
        "d2_neg_mean": float(d2_neg.mean()) if d2_neg.size else float("nan"),
        "d2_neg_min": float(d2_neg.min()) if d2_neg.size else float("nan"),
        "n_pos": int(d2_pos.size),
        "n_neg": int(d2_neg.size),
        "rows": int(n_rows),
        "mine_s": mine_s,
    }


# ----------------------------------------------------------------------------- helpers
def _check_pairs(pos_pairs: np.ndarray, n_rows: int, n_table: int) -> np.ndarray:
    pairs = np.asarray(pos_pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pos_pairs must be an (n, 2) integer array, got {pairs.dtype} {pairs.shape}")
    pairs = pairs.astype(np.int64)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= n_rows or pairs[:, 1].max() >= n_table):
        raise ValueError(f"pos_pairs out of range for {n_rows} batch rows x {n_table} table rows")
    return pairs


def _n_neg(n_neg: int, n_rows: int, n_table: int, pairs: np.ndarray) -> int:
    """n_neg capped at the number of non-positive pairs that exist."""
    n_pos = len(np.unique(pairs[:, 0] * n_table + pairs[:, 1])) if len(pairs) else 0
    return max(0, min(int(n_neg), n_rows * n_table - n_pos))


def _d2_matrix(q: "tf.Tensor", k: "tf.Tensor") -> "tf.Tensor":
    """(B, T) squared distances |q|^2 + |k|^2 - 2 q.k, clamped at 0 (one matmul, no (B,T,D))."""
    import tensorflow as tf

    qq = tf.reduce_sum(tf.square(q), axis=1, keepdims=True)
    kk = tf.reduce_sum(tf.square(k), axis=1)
    return tf.maximum(qq + kk[None, :] - 2.0 * tf.matmul(q, k, transpose_b=True), 0.0)


def _select_from_matrix(d2: "tf.Tensor", pairs: np.ndarray, n: int) -> tuple["tf.Tensor", "tf.Tensor"]:
    """Top-n smallest entries of a (B, T) matrix, positives excluded; (flat indices, values).

    tf.math.top_k puts the lower index first among equal values, which is exactly the
    flat-index tie-break used by the chunked miner.
    """
    import tensorflow as tf

    n_table = d2.shape[1]
    flat = tf.reshape(d2, [-1])
    masked = flat
    if len(pairs):
        idx = np.unique(pairs[:, 0] * n_table + pairs[:, 1])[:, None]
        masked = tf.tensor_scatter_nd_update(flat, idx, tf.fill([len(idx)], np.float32(np.inf)))
    _, sel = tf.math.top_k(-tf.stop_gradient(masked), k=n, sorted=True)
    return sel, tf.gather(flat, sel)


# ----------------------------------------------------------------------------- reference
def naive_qk_loss(q: "tf.Tensor", k_all: "tf.Tensor", pos_pairs: np.ndarray, cfg: LossConfig) -> "tf.Tensor":
    """Reference loss over the full (B, T) distance matrix; `k_all` = head over the whole table.

    Autograd flows through every table row's head activations: correct, but its memory grows
    with T. Kept as the ground truth that `qk_loss` is tested against.
    """
    import tensorflow as tf

    q = tf.convert_to_tensor(q, tf.float32)
    k_all = tf.convert_to_tensor(k_all, tf.float32)
    n_rows, n_table = q.shape[0], k_all.shape[0]
    pairs = _check_pairs(pos_pairs, n_rows, n_table)
    d2 = _d2_matrix(q, k_all)
    d2_pos = tf.gather_nd(d2, pairs)
    _, d2_neg = _select_from_matrix(d2, pairs, _n_neg(n_rows * cfg.m, n_rows, n_table, pairs))
    return bce_loss(d2_pos, d2_neg, n_rows, cfg)


# ----------------------------------------------------------------------------- mining
_KERNELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _mining_kernel(head: "keras.Model", table_dtype: np.dtype):
    """A tf.function (one per head and table dtype) mining one chunk of the table.

    The input signature has a free chunk length, so the short last chunk does not retrace.
    Math is float32 after casting the chunk (the table is float16 only to halve its memory).
    """
    import tensorflow as tf

    per_head = _KERNELS.setdefault(head, {})
    key = np.dtype(table_dtype).str
    if key in per_head:
        return per_head[key]
    width = head.input_shape[-1]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, width], tf.as_dtype(table_dtype)),
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([], tf.int32),
        ],
        reduce_retracing=True,
    )
    def kernel(chunk, q, k):
        keys = head(tf.cast(chunk, tf.float32), training=False)
        d2 = _d2_matrix(q, keys)
        values, idx = tf.math.top_k(tf.reshape(-d2, [-1]), k=k, sorted=True)
        return -values, idx

    per_head[key] = kernel
    return kernel


def _mine(q, head, table, pairs: np.ndarray, n_neg: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunked no-grad search for the n_neg hardest negatives; ((n, 2) pairs, (n,) d2).

    Keeps a running global best set: each chunk contributes its own best (n_neg + #positives)
    candidates (enough, since at most #positives of them can be positives), positives are
    dropped, and the union with the previous best is cut back to n_neg under the total order
    (d2, flat index).
    """
    import tensorflow as tf

    n_rows, n_table = q.shape[0], table.shape[0]
    n = _n_neg(n_neg, n_rows, n_table, pairs)
    best_d2 = np.empty(0, np.float32)
    best_flat = np.empty(0, np.int64)
    if n == 0:
        return np.empty((0, 2), np.int64), best_d2
    pos_flat = np.unique(pairs[:, 0] * n_table + pairs[:, 1]) if len(pairs) else np.empty(0, np.int64)
    kernel = _mining_kernel(head, table.dtype)
    q = tf.stop_gradient(tf.convert_to_tensor(q, tf.float32))
    chunk = max(1, int(chunk))
    for start in range(0, n_table, chunk):
        rows = np.asarray(table[start : start + chunk])
        c = rows.shape[0]
        k = min(n + len(pos_flat), n_rows * c)
        d2, idx = kernel(tf.convert_to_tensor(rows), q, tf.constant(k, tf.int32))
        idx = idx.numpy().astype(np.int64)
        flat = (idx // c) * n_table + start + idx % c
        cand_d2 = np.concatenate([best_d2, d2.numpy()])
        cand_flat = np.concatenate([best_flat, flat])
        keep = ~np.isin(cand_flat, pos_flat)
        cand_d2, cand_flat = cand_d2[keep], cand_flat[keep]
        order = np.lexsort((cand_flat, cand_d2))[:n]
        best_d2, best_flat = cand_d2[order], cand_flat[order]
    pairs_out = np.stack([best_flat // n_table, best_flat % n_table], axis=1).astype(np.int64)
    return pairs_out, best_d2


def mine_hard_negatives(
    q: "tf.Tensor", head: "keras.Model", table: np.ndarray, pos_pairs: np.ndarray, n_neg: int, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """(n_neg, 2) int64 (batch_row, table_row) of the hardest non-positive pairs, hardest first.

    No gradient; the table (T, F) is read chunk by chunk (a NumPy array or memmap, never
    copied whole into TensorFlow). n_neg is capped at the number of non-positive pairs.
    """
    table = _check_table(table, head)
    pairs = _check_pairs(pos_pairs, q.shape[0], table.shape[0])
    return _mine(q, head, table, pairs, n_neg, chunk)[0]


def _check_table(table: np.ndarray, head: "keras.Model") -> np.ndarray:
    if not isinstance(table, np.ndarray):
        table = np.asarray(table)
    width = head.input_shape[-1]
    if table.ndim != 2 or table.shape[1] != width:
        raise UserError(f"feature table has shape {table.shape}, but the head expects {width} columns")
    return table


# ----------------------------------------------------------------------------- the step loss
def qk_loss(
    q: "tf.Tensor",
    head: "keras.Model",
    table: np.ndarray,
    pos_pairs: np.ndarray,
    cfg: LossConfig,
    chunk: int = DEFAULT_CHUNK,
) -> tuple["tf.Tensor", dict]:
    """The QK loss of batch descriptors `q` against `head` applied to every table row.

    Call inside a tf.GradientTape: mining runs without gradient, then the head is re-run
    with gradient on the selected rows only (positives + hardest negatives). Returns the
    loss and float statistics (d2 means, loss parts, rows used, mining seconds).
    """
    import tensorflow as tf

    table = _check_table(table, head)
    n_rows, n_table = q.shape[0], table.shape[0]
    pairs = _check_pairs(pos_pairs, n_rows, n_table)
    t0 = time.perf_counter()
    neg, _ = _mine(q, head, table, pairs, n_rows * cfg.m, chunk)
    mine_s = time.perf_counter() - t0
    rows = selected_rows(pairs, neg)
    keys = head(tf.cast(tf.convert_to_tensor(np.asarray(table[rows])), tf.float32), training=False)
    return _selected_loss(q, keys, rows, pairs, neg, cfg, mine_s)


def cached_qk_loss(q: "tf.Tensor", keys: "KeyTable", pos_pairs: np.ndarray, cfg: LossConfig) -> tuple["tf.Tensor", dict]:
    """`qk_loss` when the other side is constant during the phase (its head does not train):
    `keys` holds its descriptor of every table row (`qk.cached_side`, `qk.mining.KeyTable`).

    The same selection (global top B*M, same tie rule) and the same formula on the same
    descriptors; only q carries gradient, as in `qk_loss` with a frozen head.
    """
    n_rows = q.shape[0]
    pairs = _check_pairs(pos_pairs, n_rows, keys.n)
    t0 = time.perf_counter()
    neg, _ = keys.mine(q, pairs, _n_neg(n_rows * cfg.m, n_rows, keys.n, pairs))
    mine_s = time.perf_counter() - t0
    rows = selected_rows(pairs, neg)
    return _selected_loss(q, keys.rows(rows), rows, pairs, neg, cfg, mine_s)


def selected_rows(pairs: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The table rows a step's loss touches (positives and mined negatives), sorted, unique."""
    return np.unique(np.concatenate([pairs[:, 1], neg[:, 1]]))


def _selected_loss(q, keys, rows: np.ndarray, pairs: np.ndarray, neg: np.ndarray, cfg: LossConfig,
                   mine_s: float) -> tuple["tf.Tensor", dict]:
    """The loss of the selected pairs, `keys` holding the descriptors of table rows `rows`."""
    d2_pos = pair_d2(q, keys, pairs[:, 0], np.searchsorted(rows, pairs[:, 1]))
    d2_neg = pair_d2(q, keys, neg[:, 0], np.searchsorted(rows, neg[:, 1]))
    loss, l_pos, l_neg = pair_loss(d2_pos, d2_neg, q.shape[0], cfg)
    return loss, loss_stats(loss, l_pos, l_neg, d2_pos, d2_neg, len(rows), mine_s)


def in_batch_loss(q: "tf.Tensor", k: "tf.Tensor", cfg: LossConfig) -> "tf.Tensor":
    """SimCLR-style comparison: row i of q matches row i of k; negatives from the batch only.

    Same BCE loss; the hardest min(B*M, B*(B-1)) off-diagonal pairs are the negatives.
    """
    import tensorflow as tf

    q = tf.convert_to_tensor(q, tf.float32)
    k = tf.convert_to_tensor(k, tf.float32)
    if q.shape != k.shape or q.shape.rank != 2:
        raise ValueError(f"q and k must both be (B, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    b = q.shape[0]
    diag = np.stack([np.arange(b), np.arange(b)], axis=1)
    d2 = tf.reduce_sum(tf.square(q[:, None, :] - k[None, :, :]), axis=2)
    d2_pos = tf.linalg.diag_part(d2)
    _, d2_neg = _select_from_matrix(d2, diag, _n_neg(b * cfg.m, b, b, diag))
    return bce_loss(d2_pos, d2_neg, b, cfg)
