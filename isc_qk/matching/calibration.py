"""The decision threshold of `match`: a number given, or read from an `evaluate-uap` JSON.

Why from the evaluation: on labelled data, `evaluate-uap` sorts every retrieved pair by score
and knows the precision after each one; the score where the precision last stays >= p is the
threshold that, applied to new images from the same distribution (same descriptors, the same
mix of copies and non-copies), keeps a share p of correct decisions. The JSON holds the curve at
every true positive (``pr_curve``), which is enough for any p (`evaluation.report.pr_curve_points`);
older files hold only the P90 point, which serves p = 0.9.

Scores are minus the squared L2 distance, as everywhere in the evaluation: a pair is a match
when score >= threshold.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..evaluation.metrics import operating_point
from ..formats.atomic import read_json


@dataclass
class Threshold:
    """A decision threshold (a score) and where it came from (kept in the output's JSON)."""

    score: float
    source: dict = field(default_factory=dict)

    @property
    def max_distance(self) -> float:
        """The largest squared L2 distance still called a match."""
        return -self.score

    def describe(self) -> str:
        s = self.source
        if s.get("kind") == "calibration":
            return (f"{self.score:.6g}, from {s['file']} at precision >= {s['precision_requested']:g} "
                    f"(there: precision {s['precision']:.4f}, recall {s['recall']:.4f})")
        return f"{self.score:.6g} (given with --threshold)"


def given_threshold(score: float) -> Threshold:
    if not math.isfinite(score):
        raise UserError(f"--threshold must be a finite number (a score: minus the squared L2 distance), got {score}")
    if score > 0:
        raise UserError(f"--threshold {score:g} is above 0, the best possible score (minus the squared L2 "
                        "distance): no pair could match; give a negative score such as evaluate-uap's threshold@P90")
    return Threshold(float(score), {"kind": "given"})


def threshold_from_metrics(path: str | os.PathLike, precision: float) -> Threshold:
    """The score threshold at `precision` on the labelled data an `evaluate-uap --json` describes."""
    path = Path(path)
    if not (math.isfinite(precision) and 0 < precision <= 1):
        raise UserError(f"--precision must be in (0, 1], got {precision}")
    data = read_json(path)
    if not isinstance(data, dict) or "micro_ap" not in data:
        raise UserError(f"{path}: not an evaluate-uap JSON (no micro_ap); write one with "
                        "`isc-qk evaluate-uap ... --json FILE` on labelled data")
    if data.get("knn") is not None:
        raise UserError(f"{path}: made with --knn (per-query lists): calibrate on the ISC rule's global list "
                        "(evaluate-uap without --knn)")
    curve = data.get("pr_curve")
    source = {"kind": "calibration", "file": os.path.abspath(path), "precision_requested": precision,
              "calibration_micro_ap": data.get("micro_ap"), "calibration_positives": data.get("n_positives"),
              "calibration_queries": data.get("n_queries_searched"),
              "calibration_references": data.get("n_references")}
    if curve:
        try:
            p, r, t = (np.asarray(curve[k], dtype=np.float64) for k in ("precision", "recall", "threshold"))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: pr_curve is malformed; re-run evaluate-uap --json") from None
        if not (len(p) == len(r) == len(t)):
            raise UserError(f"{path}: pr_curve lists differ in length; re-run evaluate-uap --json")
        recall, score = operating_point(p, r, t, precision)
        if recall is None:
            best = float(p.max()) if len(p) else 0.0
            raise UserError(f"{path}: precision {precision:g} is never reached on the calibration data (at best "
                            f"{best:.4f} at any recall); ask for a lower --precision")
        at = int(np.flatnonzero((r == recall) & (t == score))[0])
        return Threshold(score, {**source, "precision": float(p[at]), "recall": recall})
    if precision == 0.9 and data.get("threshold_at_p90") is not None:  # a JSON from before pr_curve
        return Threshold(float(data["threshold_at_p90"]), {**source, "precision": 0.9,
                                                           "recall": data.get("recall_at_p90")})
    if precision == 0.9 and "p90_reached" in data and not data["p90_reached"]:
        raise UserError(f"{path}: precision 0.9 is never reached on the calibration data; ask for a lower --precision")
    raise UserError(f"{path}: holds no PR curve (an older evaluate-uap JSON: only the P90 point); re-run "
                    "`isc-qk evaluate-uap ... --json FILE` to calibrate at another precision")
