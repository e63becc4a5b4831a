"""What the report shows, as plain data: the summary, the highest-scoring false positives, the
positives not found at the operating point, and what one result finds that another misses.

All of it comes from the evaluation's ONE search (`evaluate` keeps the scored list: pairs,
labels, each ground-truth pair's place in it); only the few shown queries are then scanned
against all references (`probe`) for true ranks and for what was ranked above a missed copy.

"Found" means: retrieved in the list with a score at or above the result's own recall@P90
threshold (the operating point a user would deploy); a result that never reaches precision
0.9 has no such point, and "found" then means retrieved at all (the page says which).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..evaluation.evaluate import EvalResult
from ..evaluation.report import to_json
from ..evaluation.search import exact_distances, norms_sqr
from ..formats.descriptors import Descriptors
from ..formats.ground_truth import GroundTruth
from .families import pair_scores
from .probe import Probe, probe


@dataclass
class Run:
    """One result to look at: its descriptors, their evaluation, and what the page needs probed."""

    name: str
    query: Descriptors
    reference: Descriptors
    res: EvalResult
    needs: dict[int, set] = field(default_factory=lambda: defaultdict(set))  # query row -> reference rows
    probed: Probe | None = None

    def __post_init__(self) -> None:
        self.q_row = {q: i for i, q in enumerate(self.query.ids)}
        self.r_row = {r: i for i, r in enumerate(self.reference.ids)}
        self._norms: tuple[np.ndarray, np.ndarray] | None = None

    def pair_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Exact scores of many (query, reference) pairs in one call; NaN where a side has no descriptor."""
        if self._norms is None:
            self._norms = norms_sqr(self.query.vectors), norms_sqr(self.reference.vectors)
        ok = np.array([q in self.q_row and r in self.r_row for q, r in pairs], dtype=bool)
        out = np.full(len(pairs), np.nan)
        if ok.any():
            qi = np.array([self.q_row[q] for (q, r), k in zip(pairs, ok) if k], dtype=np.int64)
            ri = np.array([self.r_row[r] for (q, r), k in zip(pairs, ok) if k], dtype=np.int64)
            out[ok] = -exact_distances(self.query.vectors, self.reference.vectors, qi, ri, *self._norms).astype(np.float64)
        return out

    @property
    def threshold(self) -> float | None:
        return self.res.threshold_at_p90

    @property
    def rule(self) -> str:
        if self.threshold is None:
            return "retrieved in the list (precision 0.9 is never reached: no operating point)"
        return f"retrieved with score >= {self.threshold:.6g} (the recall@P90 threshold)"

    def found(self, gt_index: np.ndarray) -> np.ndarray:
        """Is each ground-truth pair (by index in gt.pairs) found at the operating point?"""
        s = pair_scores(self.res, self.res.match_index[gt_index])
        return s >= self.threshold if self.threshold is not None else np.isfinite(s)

    def need(self, q: str, r: str | None = None) -> None:
        """Probe query `q` (its nearest references), and the rank of `r` for it."""
        if q in self.q_row:
            targets = self.needs[self.q_row[q]]
            if r is not None and r in self.r_row:
                targets.add(self.r_row[r])

    def run_probe(self, k: int) -> None:
        self.probed = probe(self.query.vectors, self.reference.vectors, self.needs, k)

    def rank(self, q: str, r: str) -> int | None:
        if self.probed is None or q not in self.q_row or r not in self.r_row:
            return None
        return self.probed.ranks.get((self.q_row[q], self.r_row[r]))

    def score(self, q: str, r: str) -> float | None:
        """The exact score of any pair (None when either side has no descriptor)."""
        if q not in self.q_row or r not in self.r_row:
            return None
        if self.probed is not None and (self.q_row[q], self.r_row[r]) in self.probed.distances:
            return -self.probed.distances[(self.q_row[q], self.r_row[r])]
        return float(self.pair_scores([(q, r)])[0])

    def nearest(self, q: str) -> list[dict]:
        if self.probed is None or q not in self.q_row:
            return []
        return [{"reference": self.reference.ids[r], "score": -d, "rank": i + 1}
                for i, (r, d) in enumerate(self.probed.nearest.get(self.q_row[q], []))]


def summary(run: Run) -> dict:
    out = to_json(run.res)
    out.pop("pr_curve", None)
    return {"name": run.name, **out, "found_rule": run.rule}


def _true_refs(gt: GroundTruth) -> dict[str, list[tuple[int, str]]]:
    by_query: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for g, (q, r) in enumerate(gt.pairs):
        by_query[q].append((g, r))
    return by_query


def false_positives(run: Run, gt: GroundTruth, n: int) -> list[dict]:
    """The n highest-scoring false positives of the list, with the query's true reference(s)."""
    res, pairs = run.res, run.res.pairs
    fp = np.flatnonzero(~res.is_positive)[:n]
    truth = _true_refs(gt)
    out = []
    for i in fp:
        q, r = run.query.ids[pairs.query[i]], run.reference.ids[pairs.reference[i]]
        score = float(-pairs.distance[i])
        run.need(q, r)
        true = []
        for g, t in truth.get(q, []):
            run.need(q, t)
            mi = int(res.match_index[g])
            true.append({"reference": t, "retrieved": mi >= 0})
        out.append({"query": q, "reference": r, "score": score, "list_position": int(i) + 1,
                    "above_p90": run.threshold is not None and score >= run.threshold,
                    "distractor": not true, "true": true})
    return out


def misses(run: Run, gt: GroundTruth, n: int) -> tuple[list[dict], int]:
    """Ground-truth pairs not found at the operating point, hardest (lowest score) first:
    (the first n, with what the descriptor ranked above each, and how many there are)."""
    idx = np.flatnonzero(~run.found(np.arange(len(gt.pairs))))
    scores = run.pair_scores([gt.pairs[g] for g in idx])
    order = np.lexsort((idx, np.nan_to_num(scores, nan=-np.inf)))  # no descriptor first, then lowest score
    out = []
    for g in idx[order][:n]:
        q, r = gt.pairs[g]
        mi = int(run.res.match_index[g])
        run.need(q, r)
        reason = ("no descriptor" if q not in run.q_row or r not in run.r_row else
                  "never retrieved" if mi < 0 else "below the P90 threshold")
        out.append({"query": q, "reference": r, "reason": reason, "retrieved": mi >= 0})
    return out, int(len(idx))


def comparison(a: Run, b: Run, gt: GroundTruth, n: int) -> dict:
    """The ground-truth pairs one result finds at its operating point and the other does not."""
    every = np.arange(len(gt.pairs))
    fa, fb = a.found(every), b.found(every)
    sides = {}
    for key, (win, lose), only in (("a_only", (a, b), fa & ~fb), ("b_only", (b, a), fb & ~fa)):
        idx = np.flatnonzero(only)
        lose_scores = lose.pair_scores([gt.pairs[g] for g in idx])
        order = np.lexsort((idx, np.nan_to_num(lose_scores, nan=-np.inf)))
        rows = []
        for g in idx[order][:n]:
            q, r = gt.pairs[g]
            win.need(q, r)
            lose.need(q, r)
            rows.append({"query": q, "reference": r})
        sides[key] = {"count": int(len(idx)), "rows": rows}
    return {"a": a.name, "b": b.name, "both": int((fa & fb).sum()), "neither": int((~fa & ~fb).sum()),
            "a_rule": a.rule, "b_rule": b.rule, **sides}


def fill(entries: list[dict], run: Run, neighbours: int) -> None:
    """After probing: scores and ranks of the shown pairs, and what was ranked above a miss."""
    for e in entries:
        q = e["query"]
        e.setdefault("score", run.score(q, e["reference"]))
        e["rank"] = run.rank(q, e["reference"])
        for t in e.get("true", []):
            t["score"], t["rank"] = run.score(q, t["reference"]), run.rank(q, t["reference"])
        if "reason" in e:
            above = [x for x in run.nearest(q) if e["rank"] is None or x["rank"] < e["rank"]]
            e["above"] = above[:neighbours]


def fill_comparison(comp: dict, a: Run, b: Run) -> None:
    for key, (win, lose) in (("a_only", (a, b)), ("b_only", (b, a))):
        for e in comp[key]["rows"]:
            q, r = e["query"], e["reference"]
            e["winner"] = {"score": win.score(q, r), "rank": win.rank(q, r)}
            e["loser"] = {"score": lose.score(q, r), "rank": lose.rank(q, r)}
            top = lose.nearest(q)
            e["loser_top"] = top[0] if top else None  # may be the true reference, below its threshold
