"""Every plot the tool draws (PNG, written atomically, no display needed).

* `plot_pr` - the precision-recall curve of one evaluation (`evaluate-uap --plot`);
* `plot_results` - micro-AP by phase and the PR curves of the final models (pipeline);
* `plot_losses` - a training run's loss per step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from .formats.atomic import atomic_path
from .formats.results import ResultRow


@contextlib.contextmanager
def _figure(path: str | os.PathLike, dpi: int = 100, **kw) -> Iterator[tuple]:
    """A matplotlib figure (Agg, no display) saved to `path` atomically when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**kw)
    try:
        yield fig, axes
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def plot_pr(res, path: str | os.PathLike, title: str = "") -> None:
    """The precision-recall curve of an `evaluation.evaluate.EvalResult`."""
    with _figure(path, figsize=(8, 6)) as (fig, ax):
        ax.plot(res.recalls, res.precisions)
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_title(title or f"micro-AP {res.micro_ap:.4f}")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.05)
        ax.grid(True)


def plot_results(path: str | os.PathLike, rows: list[ResultRow]) -> None:
    """Left: micro-AP by phase (QK line, baselines flat); right: PR curves of the final models."""
    plain = [r for r in rows if r.normalization == "none"]
    with _figure(path, dpi=110, nrows=1, ncols=2, figsize=(12, 4.5)) as (fig, (ax1, ax2)):
        qk_methods = list(dict.fromkeys(r.method for r in plain if r.method.startswith("QK Iteration")))
        phases = list(dict.fromkeys(r.phase for r in plain if r.method in qk_methods))
        x = np.arange(len(phases))
        for m in qk_methods:
            by_phase = {r.phase: r.micro_ap for r in plain if r.method == m}
            ax1.plot(x, [by_phase.get(p, np.nan) for p in phases], "o-", label=m, lw=2)
        for r in plain:
            if not r.method.startswith("QK Iteration"):
                ax1.axhline(r.micro_ap, ls="--", lw=1, label=f"{r.method} ({r.micro_ap:.3f})", color=_colour(r.method))
        ax1.set_xticks(x, phases)
        ax1.set_xlabel("phase")
        ax1.set_ylabel("micro-AP")
        ax1.set_title("micro-AP by phase")
        ax1.legend(fontsize=8)
        ax1.grid(alpha=0.3)
        finals: dict[str, ResultRow] = {}
        for r in rows:  # the last row of each (method, normalisation) is its final model
            finals[r.method + ("" if r.normalization == "none" else f" + {r.normalization}")] = r
        for name, r in finals.items():
            if r.curve:
                ax2.plot(r.curve["recall"], r.curve["precision"], label=f"{name} ({r.micro_ap:.3f})", lw=1.5)
        ax2.set_xlabel("recall")
        ax2.set_ylabel("precision")
        ax2.set_xlim(0, 1)
        ax2.set_ylim(0, 1.02)
        ax2.set_title("precision-recall, final models")
        ax2.legend(fontsize=7)
        ax2.grid(alpha=0.3)


def _colour(method: str) -> str | None:
    known = {"GIST-PCA256": "tab:gray", "ImageNet features": "tab:green", "in-batch negatives": "tab:red"}
    return next((c for k, c in known.items() if method.startswith(k)), None)


def plot_losses(path: str | os.PathLike, losses: list[float], title: str) -> None:
    """The loss of every step and its running mean (a training run's loss_curve.png)."""
    with _figure(path, figsize=(7, 4)) as (fig, ax):
        steps = np.arange(1, len(losses) + 1)
        ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
        w = max(1, len(losses) // 50)
        if w > 1:
            smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], smooth, lw=1.5, label=f"mean of {w}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()


def plot_pr_curves(path: str | os.PathLike, results: dict) -> None:
    """Precision-recall curves of several evaluations (name -> EvalResult) on one plot, each
    with its recall@P90 point (`isc-qk inspect`)."""
    with _figure(path, dpi=100, figsize=(7.2, 4.32)) as (fig, ax):
        for name, res in results.items():
            line, = ax.plot(res.recalls, res.precisions, lw=1.6, label=f"{name} (micro-AP {res.micro_ap:.4f})")
            if res.recall_at_p90 is not None:  # the operating point, on the curve
                at = np.flatnonzero((np.asarray(res.recalls) == res.recall_at_p90)
                                    & (np.asarray(res.thresholds) == res.threshold_at_p90))
                y = float(res.precisions[at[0]]) if len(at) else 0.9
                ax.plot([res.recall_at_p90], [y], "o", color=line.get_color(), ms=6)
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=9)
