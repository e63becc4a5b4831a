"""Multi-device training for train-q / train-k with `tf.distribute`.

Strategies (`make_strategy`):

* ``default``: one device, the ordinary single-device step of `qk.steps.Stepper`.
* ``mirrored``: `tf.distribute.MirroredStrategy` over the local GPUs (or, without GPUs, over
  the logical CPU devices, see `logical_cpu_devices`). One machine, synchronous.
* ``multiworker``: `tf.distribute.MultiWorkerMirroredStrategy` across machines. Every worker
  runs the same command with its own ``TF_CONFIG`` environment variable, e.g. for worker 1
  of 2: ``{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type":
  "worker", "index": 1}}``. All workers must be started; the first collective waits for them.

Why the step is not just the usual ``strategy.run(per-replica loss / global batch)``: the QK
loss is GLOBAL over the batch. Its B*M hardest negatives are chosen over the whole (B, T)
matrix and L_pos divides by B, so a replica that mined on its own slice of the batch would
pick other negatives and give another loss. The distributed step therefore keeps the
single-device loss exactly and only splits the work that is per image:

1. forward: each replica computes the descriptors of its slice of the batch (backbone + own
   head, the expensive part); they are gathered into the full (B, D) batch ``x``;
2. host: hard negatives are mined ONCE with the full ``x`` against the key table (the
   NumPy float16 table or memmap is read in chunks by this one process; it is shared and
   read-only, never copied per replica), and the other side's head is run (no gradient) over
   the few selected table rows (positives + B*M negatives) -> ``keys``;
3. backward: each replica recomputes its slice ``x_r`` under a tape and runs the other head on
   its slice of the selected rows ``k_r``; it evaluates the loss on
   ``x = x_full + pad(x_r - stop_gradient(x_r))`` (likewise ``keys``). The value is exactly the
   full-batch loss (the added term is zero), but the gradient flows only through the
   replica's own rows. By the chain rule, d loss / d weights is the SUM over rows of
   (d loss / d row) (d row / d weights), so the SUM of the replicas' gradients (the
   all-reduce the Keras optimizer does in replica context) equals the single-device
   gradient, with no 1/replicas scaling anywhere.

The price is one extra forward pass of the backbone per step (step 3 recomputes step 1's
descriptors, since a tape cannot live across two `strategy.run` calls), and mining runs on
one device. When the other head does not train (``train_other_head=False``), step 2 mines
against the other side's cached descriptors (`qk.mining.KeyTable`, on the first device) and
step 3 uses the selected rows' cached descriptors as constants; the rest is the same. ``negatives="batch"`` (SimCLR-style) works the same way with ``q`` and ``k`` both
gathered, and the in-batch loss evaluated on the full batch by every replica.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    import tensorflow as tf

KINDS = ("default", "mirrored", "multiworker")


# --------------------------------------------------------------------------- devices / strategies
def logical_cpu_devices(n: int) -> list[str]:
    """Split the first physical CPU into `n` logical devices; return their names.

    For tests and for trying ``--distribute mirrored`` on a machine without GPUs. Must be
    called before TensorFlow initialises its devices (before any tensor is created); after
    that TensorFlow refuses, and this raises UserError. Calling it again with the same `n`
    is harmless.
    """
    import tensorflow as tf

    if n < 1:
        raise UserError(f"logical CPU devices must be >= 1, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)  # None: not split, i.e. one device
    if (1 if current is None else len(current)) != n:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        except RuntimeError:
            raise UserError(
                f"cannot split the CPU into {n} logical devices: TensorFlow has already initialised its devices "
                "(call logical_cpu_devices before anything else uses TensorFlow)"
            ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError(
            "--distribute multiworker needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos})") from None
    cluster = conf.get("cluster") if isinstance(conf, dict) else None
    task = conf.get("task") if isinstance(conf, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker") or not isinstance(task, dict):
        raise UserError('TF_CONFIG must have "cluster": {"worker": [...]} and "task": {"type": ..., "index": ...}')
    if task.get("type") not in cluster or not isinstance(task.get("index"), int) or not (
        0 <= task["index"] < len(cluster[task["type"]])
    ):
        raise UserError(f"TF_CONFIG task {task} is not one of the cluster's {', '.join(cluster)} entries")
    return conf


def make_strategy(kind: str = "default", devices: list[str] | None = None) -> "tf.distribute.Strategy":
    """The `tf.distribute.Strategy` for ``--distribute KIND`` (see the module docstring).

    ``mirrored`` uses `devices` when given, else every local GPU, else every logical CPU device
    (one unless `logical_cpu_devices` split the CPU). ``multiworker`` reads TF_CONFIG.
    """
    import tensorflow as tf

    if kind not in KINDS:
        raise UserError(f"--distribute must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    _tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_default(strategy: "tf.distribute.Strategy") -> bool:
    """True for TensorFlow's default (no-op, single-device) strategy."""
    import tensorflow as tf

    with strategy.scope():
        return not tf.distribute.has_strategy()


def replica_slices(n_rows: int, n_replicas: int) -> list[tuple[int, int]]:
    """(start, end) of each replica's rows: contiguous, in replica order, sizes differ by <= 1."""
    sizes = [len(e) for e in np.array_split(np.arange(n_rows), n_replicas)]
    starts = np.cumsum([0, *sizes])
    return [(int(starts[i]), int(starts[i + 1])) for i in range(n_replicas)]


# --------------------------------------------------------------------------- the step
def _own_rows(value, start, n: int):
    """`value` (rows of this replica) placed at `start` in an (n, D) zero matrix."""
    import tensorflow as tf

    size = tf.shape(value)[0]
    return tf.pad(value, [[start, n - start - size], [0, 0]])


def _through_own_rows(full, part, start):
    """Equal to `full`, with the gradient flowing only through this replica's `part` rows."""
    import tensorflow as tf

    return full + _own_rows(part - tf.stop_gradient(part), start, tf.shape(full)[0])


class DistributedStepper:
    """The distributed twin of `qk.steps.Stepper` (same interface: `loss_and_grads`, `apply`).

    `loss_and_grads` returns per-replica gradients (each replica's share, see the module
    docstring); `apply` sums them across replicas and updates the mirrored variables, so a
    non-finite loss can still be refused before any weight changes.
    """

    def __init__(self, strategy, model, cfg, data, variables, optimizer, key_table=None) -> None:
        import tensorflow as tf

        from .loss import in_batch_loss, pair_d2, pair_loss
        from .steps import side_descriptors

        self.strategy, self.model, self.cfg, self.data = strategy, model, cfg, data
        self.key_table = key_table  # qk.mining.KeyTable: the other side's cached descriptors
        self.variables, self.optimizer = variables, optimizer
        self.loss_cfg = cfg.loss
        self.n = strategy.num_replicas_in_sync
        # every batch has this size (drop-last batches, qk.data.batch_rows); the traced loss uses it as B
        self.batch = min(cfg.batch_size, data.n)
        if self.batch < self.n:
            raise UserError(f"batch of {self.batch} is smaller than the {self.n} replicas; use --batch >= {self.n}")
        side = cfg.side
        other = "k" if side == "q" else "q"
        self.other = other
        lc = self.loss_cfg

        def describe_pair(inp):
            if cfg.negatives == "batch":
                return side_descriptors(model, "q", inp, "q_"), side_descriptors(model, "k", inp, "k_")
            return (side_descriptors(model, side, inp),)

        @tf.function
        def forward(dist_inp):  # gathered in the same graph: an eager gather retraces every call
            return [strategy.gather(v, axis=0) for v in strategy.run(describe_pair, args=(dist_inp,))]

        def table_grads(inp, start, feats, kstart, x_full, keys_full, pq, pk, nq, nk):
            with tf.GradientTape() as tape:
                (x_r,) = describe_pair(inp)
                x = _through_own_rows(x_full, x_r, start)
                k_r = model.head(other)(feats, training=False)
                keys = _through_own_rows(keys_full, k_r, kstart)
                d2_pos = pair_d2(x, keys, pq, pk)
                d2_neg = pair_d2(x, keys, nq, nk)
                loss, l_pos, l_neg = pair_loss(d2_pos, d2_neg, self.batch, lc)
            grads = tape.gradient(loss, variables)
            return grads, tf.stack([loss, l_pos, l_neg]), d2_pos, d2_neg

        def cached_grads(inp, start, x_full, keys, pq, pk, nq, nk):
            """The other side is constant (cached descriptors `keys` of the selected rows): only
            this replica's own batch rows carry gradient."""
            with tf.GradientTape() as tape:
                (x_r,) = describe_pair(inp)
                x = _through_own_rows(x_full, x_r, start)
                d2_pos = pair_d2(x, keys, pq, pk)
                d2_neg = pair_d2(x, keys, nq, nk)
                loss, l_pos, l_neg = pair_loss(d2_pos, d2_neg, self.batch, lc)
            grads = tape.gradient(loss, variables)
            return grads, tf.stack([loss, l_pos, l_neg]), d2_pos, d2_neg

        def batch_grads(inp, start, q_full, k_full):
            with tf.GradientTape() as tape:
                q_r, k_r = describe_pair(inp)
                q = _through_own_rows(q_full, q_r, start)
                k = _through_own_rows(k_full, k_r, start)
                loss = in_batch_loss(q, k, lc)
            return tape.gradient(loss, variables), loss

        # the number of selected table rows changes every step: relax shapes, do not retrace
        self._table_step = tf.function(lambda *a: strategy.run(table_grads, args=a), reduce_retracing=True)
        self._cached_step = tf.function(lambda *a: strategy.run(cached_grads, args=a), reduce_retracing=True)
        self._batch_step = tf.function(lambda *a: strategy.run(batch_grads, args=a))
        self._forward = forward

        def apply_replica(*grads):
            # tf.identity puts each gradient on this replica's device: MultiWorkerMirroredStrategy
            # cannot all-reduce a function input that has no device ("destinations can not be empty")
            optimizer.apply_gradients(zip([tf.identity(g) for g in grads], variables))

        @tf.function
        def apply(grads):  # the optimizer all-reduces (SUM) the replicas' gradients in replica context
            strategy.run(apply_replica, args=tuple(grads))

        self.apply = apply

    # ------------------------------------------------------------------ helpers
    def _per_replica(self, arrays: dict[str, np.ndarray], slices: list[tuple[int, int]]):
        """A distributed dict: replica i gets rows slices[i] of every array."""
        import tensorflow as tf

        def value(ctx):
            s, e = slices[ctx.replica_id_in_sync_group]
            return {k: tf.constant(v[s:e]) for k, v in arrays.items()}

        return self.strategy.experimental_distribute_values_from_function(value)

    def _per_replica_scalar(self, values: list[int]):
        import tensorflow as tf

        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(values[ctx.replica_id_in_sync_group], tf.int32)
        )

    def _first(self, per_replica):
        return self.strategy.experimental_local_results(per_replica)[0]

    # ------------------------------------------------------------------ the step
    def loss_and_grads(self, rows: np.ndarray, inputs: dict) -> tuple[object, dict, object]:
        import tensorflow as tf

        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        b = len(next(iter(arrays.values())))
        if b != self.batch:
            raise ValueError(f"batch of {b} rows, expected {self.batch}")
        slices = replica_slices(b, self.n)
        dist_inp = self._per_replica(arrays, slices)
        starts = self._per_replica_scalar([s for s, _ in slices])
        gathered = [tf.convert_to_tensor(v) for v in self._forward(dist_inp)]
        if self.cfg.negatives == "batch":
            grads, loss = self._batch_step(dist_inp, starts, gathered[0], gathered[1])
            return self._first(loss), {}, grads

        from .loss import loss_stats, mine_hard_negatives

        x = gathered[0]
        pos = self.data.positive_pairs(rows)
        idx = lambda a: tf.constant(a, tf.int32)  # noqa: E731
        if self.key_table is not None:
            return self._cached(x, pos, dist_inp, starts, idx)
        head = self.model.head(self.other)
        t0 = time.perf_counter()
        neg = mine_hard_negatives(x, head, self.data.table, pos, b * self.loss_cfg.m, chunk=self.cfg.chunk)
        mine_s = time.perf_counter() - t0
        sel = np.unique(np.concatenate([pos[:, 1], neg[:, 1]]))
        feats = np.asarray(self.data.table[sel], dtype=np.float32)
        keys = head(tf.constant(feats), training=False)
        kslices = replica_slices(len(sel), self.n)
        dist_feats = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(feats[slice(*kslices[ctx.replica_id_in_sync_group])])
        )
        kstarts = self._per_replica_scalar([s for s, _ in kslices])
        grads, parts, d2_pos, d2_neg = self._table_step(
            dist_inp, starts, dist_feats, kstarts, x, tf.convert_to_tensor(keys),
            idx(pos[:, 0]), idx(np.searchsorted(sel, pos[:, 1])), idx(neg[:, 0]), idx(np.searchsorted(sel, neg[:, 1])),
        )
        loss, l_pos, l_neg = (float(v) for v in self._first(parts).numpy())
        stats = loss_stats(loss, l_pos, l_neg, self._first(d2_pos).numpy(), self._first(d2_neg).numpy(), len(sel), mine_s)
        return self._first(parts)[0], stats, grads

    def _cached(self, x, pos, dist_inp, starts, idx):
        """Mining once against the cached descriptors (on their device), then each replica's
        share of the gradient; the other head is frozen, so the selected rows are constants."""
        from .loss import _check_pairs, _n_neg, loss_stats, selected_rows

        kt, b = self.key_table, int(x.shape[0])
        pairs = _check_pairs(pos, b, kt.n)
        t0 = time.perf_counter()
        neg, _ = kt.mine(x, pairs, _n_neg(b * self.loss_cfg.m, b, kt.n, pairs))
        mine_s = time.perf_counter() - t0
        sel = selected_rows(pairs, neg)
        grads, parts, d2_pos, d2_neg = self._cached_step(
            dist_inp, starts, x, kt.rows(sel),
            idx(pairs[:, 0]), idx(np.searchsorted(sel, pairs[:, 1])), idx(neg[:, 0]), idx(np.searchsorted(sel, neg[:, 1])),
        )
        loss, l_pos, l_neg = (float(v) for v in self._first(parts).numpy())
        stats = loss_stats(loss, l_pos, l_neg, self._first(d2_pos).numpy(), self._first(d2_neg).numpy(), len(sel), mine_s)
        return self._first(parts)[0], stats, grads
