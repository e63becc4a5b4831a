"""One training step: the batch's inputs, forward + loss + gradients, and the update.

Forward passes are tf.functions (never XLA on a CPU); the table loss runs eagerly under the
same tape: `qk.loss.cached_qk_loss` against the cached descriptors of a frozen other side
(`key_table`, mined on the device), else `qk.loss.qk_loss` (chunked mining through the other
head, then that head re-run on the selected rows). `qk.distribute.DistributedStepper` is the multi-device twin with the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..configs import TrainConfig
from ..errors import UserError
from .data import TrainData, batch_rows, partner_choice
from .inputs import InputPlan, load_batch


def side_descriptors(model, side: str, inp: dict, prefix: str = ""):
    """Descriptors of one side from a batch's inputs: the head over precomputed rows of a frozen
    backbone (``feats``), or backbone + head over pixels and start vectors (``px``, ``g``)."""
    if prefix + "feats" in inp:
        return model.head(side)(inp[prefix + "feats"], training=False)
    return model.describe(side, inp[prefix + "px"], inp[prefix + "g"])


def trainable_variables(model, cfg: TrainConfig) -> list:
    """What a stage trains: train-q the Q backbone, Q head and (`train_other_head`) K head;
    train-k the mirror; the in-batch comparison both full models. A frozen backbone never trains."""
    backbone = (lambda s: [] if model.frozen else [model.backbone(s)])  # noqa: E731
    if cfg.negatives == "batch":
        parts = [*backbone("q"), model.head("q"), *backbone("k"), model.head("k")]
    else:
        other = "k" if cfg.side == "q" else "q"
        parts = [*backbone(cfg.side), model.head(cfg.side)] + ([model.head(other)] if cfg.train_other_head else [])
    return [v for p in parts for v in p.trainable_weights]


class Stepper:
    """Forward/backward of one step on one device (`loss_and_grads`), then `apply`."""

    def __init__(self, model, cfg: TrainConfig, data: TrainData, variables, optimizer, key_table=None) -> None:
        import tensorflow as tf

        self.model, self.cfg, self.data, self.key_table = model, cfg, data, key_table
        self.variables, self.optimizer = variables, optimizer
        self.describe = tf.function(lambda side, inp, prefix="": side_descriptors(model, side, inp, prefix))

        @tf.function
        def apply(grads):
            optimizer.apply_gradients(zip(grads, variables))

        self.apply = apply

    def loss_and_grads(self, rows: np.ndarray, inputs: dict) -> tuple[object, dict, list]:
        import tensorflow as tf

        from .loss import cached_qk_loss, in_batch_loss, qk_loss

        cfg = self.cfg
        with tf.GradientTape() as tape:
            if cfg.negatives == "batch":
                q = self.describe("q", inputs, "q_")
                k = self.describe("k", inputs, "k_")
                loss = in_batch_loss(q, k, cfg.loss)
                stats: dict = {}
            else:
                x = self.describe(cfg.side, inputs)
                other = "k" if cfg.side == "q" else "q"
                if self.key_table is not None:  # the other head is frozen: its descriptors are cached
                    loss, stats = cached_qk_loss(x, self.key_table, self.data.positive_pairs(rows), cfg.loss)
                else:
                    loss, stats = qk_loss(x, self.model.head(other), self.data.table, self.data.positive_pairs(rows),
                                          cfg.loss, chunk=cfg.chunk)
        return loss, stats, tape.gradient(loss, self.variables)


class TableRows:
    """Rows `index` of a (memory-mapped) feature table, read batch by batch: the items of a
    frozen side (8M edited copies at DISC21 size) are never copied into memory whole."""

    def __init__(self, table: np.ndarray, index: np.ndarray) -> None:
        self.table, self.index = table, np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), int(self.table.shape[1]))

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self.table[self.index[np.asarray(rows)]])


@dataclass
class ItemInputs:
    """Per-item arrays a step needs besides decoded pixels: the start vectors of a Keras side, or
    the whole head input (precomputed features + start) of a frozen side; likewise for the
    partners (the queries) of the in-batch comparison."""

    items: np.ndarray
    partners: np.ndarray | None = None
    frozen: bool = False


def batch_loader(cfg: TrainConfig, data: TrainData, arrays: ItemInputs, model, batch: int,
                 pool: ThreadPoolExecutor) -> Callable[[int], Callable[[], tuple]]:
    """`inputs_of(step)` -> a task that makes step's batch: (rows, {input name: array}).

    The batch of a step is a pure function of (seed, step) (`qk.data.batch_rows`), so a
    resumed run sees exactly the batches the interrupted one would have seen. A frozen side
    decodes nothing: its rows were precomputed.
    """
    def side(files, rows, values, prefix: str) -> dict:
        if arrays.frozen:
            return {prefix + "feats": np.asarray(values[rows], np.float32)}
        own = prefix[:1] if prefix else cfg.side  # "k_" / "q_" in batch mode
        b = load_batch(files, 0, InputPlan(backbone=model.side(own).encoder), pool)
        _no_bad(b)
        return {prefix + "px": b.pixels, prefix + "g": values[rows]}

    def inputs_of(step: int) -> Callable[[], tuple]:
        def task():
            rows = batch_rows(cfg.seed, step, data.n, batch)
            if cfg.negatives == "batch":
                qrows = partner_choice(cfg.seed, step, data.n, batch, data.partner_of, rows)
                return rows, {**side([data.items[r] for r in rows], rows, arrays.items, "k_"),
                              **side([data.partners[j] for j in qrows], qrows, arrays.partners, "q_")}
            return rows, side([data.items[r] for r in rows], rows, arrays.items, "")

        return task

    return inputs_of


def _no_bad(*batches) -> None:
    for b in batches:
        if b.bad:
            raise UserError(f"image became unreadable during training: {next(iter(b.bad.values()))}")
