"""One training step: the batch's inputs, forward + loss + gradients, and the update.

Forward passes are tf.functions (never XLA on a CPU); the table loss (NumPy mining + the
other side's head re-run on the selected rows, `qk.loss.qk_loss`) runs eagerly under the same
tape. `qk.distribute.DistributedStepper` is the multi-device twin with the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..configs import TrainConfig
from ..errors import UserError
from .data import TrainData, batch_rows, partner_choice
from .inputs import load_batch


def trainable_variables(model, cfg: TrainConfig) -> list:
    """What a stage trains: train-q the Q backbone, Q head and K head; train-k the mirror;
    the in-batch comparison both full models."""
    if cfg.negatives == "batch":
        parts = [model.q_backbone, model.q_head, model.k_backbone, model.k_head]
    elif cfg.side == "q":
        parts = [model.q_backbone, model.q_head, model.k_head]
    else:
        parts = [model.k_backbone, model.k_head, model.q_head]
    return [v for p in parts for v in p.trainable_weights]


class Stepper:
    """Forward/backward of one step on one device (`loss_and_grads`), then `apply`."""

    def __init__(self, model, cfg: TrainConfig, data: TrainData, variables, optimizer) -> None:
        import tensorflow as tf

        self.model, self.cfg, self.data = model, cfg, data
        self.variables, self.optimizer = variables, optimizer
        self.describe = {s: tf.function(lambda px, g, s=s: model.describe(s, px, g)) for s in ("q", "k")}

        @tf.function
        def apply(grads):
            optimizer.apply_gradients(zip(grads, variables))

        self.apply = apply

    def loss_and_grads(self, rows: np.ndarray, inputs: dict) -> tuple[object, dict, list]:
        import tensorflow as tf

        from .loss import in_batch_loss, qk_loss

        cfg = self.cfg
        with tf.GradientTape() as tape:
            if cfg.negatives == "batch":
                q = self.describe["q"](inputs["q_px"], inputs["q_g"])
                k = self.describe["k"](inputs["k_px"], inputs["k_g"])
                loss = in_batch_loss(q, k, cfg.loss)
                stats: dict = {}
            else:
                x = self.describe[cfg.side](inputs["px"], inputs["g"])
                other = "k" if cfg.side == "q" else "q"
                loss, stats = qk_loss(x, self.model.head(other), self.data.table, self.data.positive_pairs(rows),
                                      cfg.loss, chunk=cfg.chunk)
        return loss, stats, tape.gradient(loss, self.variables)


def batch_loader(cfg: TrainConfig, data: TrainData, starts: np.ndarray, partner_starts: np.ndarray | None,
                 size: int, batch: int, pool: ThreadPoolExecutor) -> Callable[[int], Callable[[], tuple]]:
    """`inputs_of(step)` -> a task that decodes step's batch: (rows, {input name: array}).

    The batch of a step is a pure function of (seed, step) (`qk.data.batch_rows`), so a
    resumed run sees exactly the batches the interrupted one would have seen.
    """

    def inputs_of(step: int) -> Callable[[], tuple]:
        def task():
            rows = batch_rows(cfg.seed, step, data.n, batch)
            if cfg.negatives == "batch":
                qrows = partner_choice(cfg.seed, step, data.n, batch, data.partner_of, rows)
                kb = load_batch([data.items[r] for r in rows], 0, size, None, pool)
                qb = load_batch([data.partners[j] for j in qrows], 0, size, None, pool)
                _no_bad(kb, qb)
                return rows, {"k_px": kb.pixels, "k_g": starts[rows], "q_px": qb.pixels, "q_g": partner_starts[qrows]}
            b = load_batch([data.items[r] for r in rows], 0, size, None, pool)
            _no_bad(b)
            return rows, {"px": b.pixels, "g": starts[rows]}

        return task

    return inputs_of


def _no_bad(*batches) -> None:
    for b in batches:
        if b.bad:
            raise UserError(f"image became unreadable during training: {next(iter(b.bad.values()))}")
