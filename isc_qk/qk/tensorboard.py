"""Training logs where Keras users look: TensorBoard event files (`--tensorboard DIR`).

Beside ``losses.csv`` and ``loss_curve.png`` (which stay the record), every step writes the
loss and its parts, the distances of the positives and of the mined hard negatives, and the
learning rate with `tf.summary`, so ``tensorboard --logdir DIR`` shows a run (or every phase
of a pipeline, one sub-folder each) as it trains. Scalars, by tag:

* ``loss/total``, ``loss/pos``, ``loss/neg`` - L and its two BCE parts (`qk.loss`);
* ``distance/pos_mean``, ``distance/neg_mean``, ``distance/neg_min`` - squared distances of
  the positive pairs and of the B*M mined negatives (a collapsing margin shows here first);
* ``lr`` - the learning rate the step used; ``time/mine_s`` - seconds spent mining.

A resumed run appends to the same folder from the step it resumes at.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: losses.csv statistic -> TensorBoard tag
TAGS = {
    "loss_pos": "loss/pos",
    "loss_neg": "loss/neg",
    "d2_pos_mean": "distance/pos_mean",
    "d2_neg_mean": "distance/neg_mean",
    "d2_neg_min": "distance/neg_min",
    "mine_s": "time/mine_s",
}


class TrainLog:
    """Writes one training run's scalars; a no-op when no folder is given."""

    def __init__(self, logdir: str | os.PathLike | None) -> None:
        self.writer = None
        if logdir is not None:
            import tensorflow as tf

            Path(logdir).mkdir(parents=True, exist_ok=True)
            self.writer = tf.summary.create_file_writer(str(logdir))

    def step(self, step: int, loss: float, stats: dict, lr: float) -> None:
        """Log finished step `step` (1-based, as losses.csv)."""
        if self.writer is None:
            return
        import tensorflow as tf

        with self.writer.as_default(step=step):
            tf.summary.scalar("loss/total", loss)
            for key, tag in TAGS.items():
                v = stats.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    tf.summary.scalar(tag, float(v))
            tf.summary.scalar("lr", float(lr))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def check_logdir(logdir: str | os.PathLike | None, inputs: dict) -> None:
    """The log folder is an output like any other: never an input, never inside one."""
    if logdir is None:
        return
    from ..stages import guard

    guard.check_paths({"--tensorboard": logdir}, inputs, {"--tensorboard": True})
