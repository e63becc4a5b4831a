"""The pipeline's results table: one row per (method, phase, normalisation), like the paper's Table 2.

Written three ways so that people and scripts both get what they want: ``results.json``
(every number), ``results.md`` (the table), ``results.png`` (micro-AP by phase for each method,
and the precision-recall curves of the final models).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_path, read_json, write_json


@dataclass
class ResultRow:
    method: str  # "GIST-PCA256", "ImageNet features", "QK Iteration", "in-batch negatives"
    phase: str  # "-" for baselines without phases, else Q1, K1, ...
    normalization: str  # "none", "nes", "whiten"
    micro_ap: float
    recall_at_p90: float | None
    recall_at_rank1: float
    image_passes: float = 0.0  # training images seen / training set size
    seconds: float = 0.0  # wall time of the stage that produced the descriptors
    curve: dict = field(default_factory=dict, repr=False)  # {"precision": [...], "recall": [...]}

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.phase, self.normalization)


class Results:
    """An ordered, de-duplicated list of rows, saved after every change (resumable)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[ResultRow] = []
        if self.path.is_file():
            self.rows = [ResultRow(**r) for r in read_json(self.path).get("rows", [])]

    def get(self, method: str, phase: str, normalization: str = "none") -> ResultRow | None:
        return next((r for r in self.rows if r.key == (method, phase, normalization)), None)

    def add(self, row: ResultRow) -> None:
        self.rows = [r for r in self.rows if r.key != row.key] + [row]
        write_json(self.path, {"rows": [asdict(r) for r in self.rows]})


def curve_of(res) -> dict:
    """A PR curve thinned to <= 400 points (the plot does not need every prediction)."""
    p, r = np.asarray(res.precisions), np.asarray(res.recalls)
    idx = np.unique(np.linspace(0, len(p) - 1, num=min(len(p), 400)).astype(int)) if len(p) else []
    return {"precision": [float(p[i]) for i in idx], "recall": [float(r[i]) for i in idx]}


def _fmt(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.4f}"


def markdown_table(rows: list[ResultRow]) -> str:
    lines = [
        "| method | phase | normalisation | micro-AP | R@P90 | R@1 | image passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.phase} | {r.normalization} | {r.micro_ap:.4f} | {_fmt(r.recall_at_p90)} "
            f"| {r.recall_at_rank1:.4f} | {r.image_passes:g} |"
        )
    return "\n".join(lines) + "\n"


def rich_table(rows: list[ResultRow], title: str = "Results"):
    from rich.table import Table

    t = Table(title=title)
    for col in ("method", "phase", "norm.", "micro-AP", "R@P90", "R@1", "passes"):
        t.add_column(col, justify="right" if col in ("micro-AP", "R@P90", "R@1", "passes") else "left")
    for r in rows:
        t.add_row(
            r.method, r.phase, r.normalization, f"{r.micro_ap:.4f}", _fmt(r.recall_at_p90),
            f"{r.recall_at_rank1:.4f}", f"{r.image_passes:g}",
        )
    return t


def write_markdown(path: str | os.PathLike, rows: list[ResultRow], header: str = "") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text((header + "\n\n" if header else "") + markdown_table(rows))


def plot_results(path: str | os.PathLike, rows: list[ResultRow]) -> None:
    """Left: micro-AP by phase (QK line, baselines flat); right: PR curves of the final models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [r for r in rows if r.normalization == "none"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    qk = [r for r in plain if r.method == "QK Iteration"]
    phases = [r.phase for r in qk]
    x = np.arange(len(phases))
    if qk:
        by_phase = {r.phase: r.micro_ap for r in qk}
        ax1.plot(x, [by_phase.get(p, np.nan) for p in phases], "o-", label="QK Iteration", lw=2)
    for r in plain:
        if r.method != "QK Iteration":
            ax1.axhline(r.micro_ap, ls="--", lw=1, label=f"{r.method} ({r.micro_ap:.3f})", color=_colour(r.method))
    ax1.set_xticks(x, phases)
    ax1.set_xlabel("phase")
    ax1.set_ylabel("micro-AP")
    ax1.set_title("micro-AP by phase")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)

    finals: dict[str, ResultRow] = {}
    for r in rows:  # the last row of each (method, normalisation) is its final model
        finals[f"{r.method}" + ("" if r.normalization == "none" else f" + {r.normalization}")] = r
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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _colour(method: str) -> str:
    return {"GIST-PCA256": "tab:gray", "ImageNet features": "tab:green", "in-batch negatives": "tab:red"}.get(
        method, "tab:purple"
    )


def write_all(work: str | os.PathLike, results: Results, header: str = "") -> None:
    work = Path(work)
    write_markdown(work / "results.md", results.rows, header)
    plot_results(work / "results.png", results.rows)
    write_json(work / "results.json", {"rows": [asdict(r) for r in results.rows]})
