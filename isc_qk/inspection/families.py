"""Metrics per edit family and per edit, from an edit manifest (`augment`'s manifest.csv).

What tells a researcher what to train next is WHICH edits the descriptor fails on. Every query
of the manifest lists its edits (``ops``, JSON); its families come from the recipe table
(`augment.recipe.OPS`: colour, overlay, pixel, spatial, composition). A query with several
edits counts in each of their groups.

Per group, from the ONE search of the evaluation (nothing is searched again):

* micro-AP and recall@P90 of the group's queries alone: their predictions in the global list
  and their ground-truth pairs, as if the benchmark held only those queries;
* recall at the global P90 threshold: the share of the group's positives the whole system
  finds at its operating point (the number a deployment sees).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..evaluation.evaluate import EvalResult
from ..evaluation.metrics import metrics_from_arrays
from ..formats.descriptors import Descriptors
from ..formats.ground_truth import GroundTruth
from ..formats.manifest import read_manifest

UNLISTED = "(not in the manifest)"


def pair_scores(res: EvalResult, match_index: np.ndarray) -> np.ndarray:
    """The list score of each given ground-truth pair's match, -inf where it was not retrieved."""
    scores = res.pairs.scores
    out = np.full(len(match_index), -np.inf)
    hit = match_index >= 0
    out[hit] = scores[match_index[hit]]
    return out


@dataclass
class EditLog:
    """The edits of the ground-truth queries, grouped."""

    families: dict[str, set]  # family -> query ids
    ops: dict[str, set]  # edit -> query ids
    per_query: dict[str, list[str]]  # query id -> its edits, in order
    unlisted: int  # ground-truth queries without a manifest row


def edit_groups(manifest: str | os.PathLike, query_ids: list[str]) -> EditLog:
    """The edits of `query_ids` from the manifest, grouped by family and by edit."""
    from ..augment.recipe import OPS

    rows = read_manifest(manifest)
    if not rows:
        raise UserError(f"{manifest}: the edit manifest has no rows")
    wanted = set(query_ids)
    families: dict[str, set] = defaultdict(set)
    ops: dict[str, set] = defaultdict(set)
    per_query: dict[str, list[str]] = {}
    for n, row in enumerate(rows, start=2):
        q = row["query_id"]
        if q not in wanted:
            continue
        try:
            edits = json.loads(row["ops"])
            names = [e["op"] for e in edits]
        except (ValueError, TypeError, KeyError):
            raise UserError(f"{manifest}:{n}: ops is not a JSON list of edits ({{\"op\": name, ...}})") from None
        per_query[q] = [str(n) for n in names]
        for name in names:
            ops[str(name)].add(q)
            families[OPS[name].family if name in OPS else "other"].add(q)
    if not per_query:
        raise UserError(f"{manifest}: none of its query ids is a ground-truth query (e.g. {rows[0]['query_id']!r} "
                        f"vs {query_ids[0]!r}): is it the manifest of these queries?")
    missing = wanted - set(per_query)
    if missing:
        families[UNLISTED] = set(missing)
    return EditLog(dict(families), dict(ops), per_query, len(missing))


def group_metrics(res: EvalResult, query: Descriptors, gt: GroundTruth, groups: dict[str, set]) -> list[dict]:
    """One row per group (sorted by name): queries, positives, micro-AP, R@P90, found at the global P90."""
    pairs = res.pairs
    scores = pairs.scores
    q_row = {q: i for i, q in enumerate(query.ids)}
    gt_query = np.array([q for q, _ in gt.pairs], dtype=object)
    rows = []
    for name in sorted(groups):
        ids = groups[name]
        sel_rows = np.array(sorted(q_row[q] for q in ids if q in q_row), dtype=np.int64)
        in_group = np.isin(pairs.query, sel_rows)
        g = np.flatnonzero(np.isin(gt_query, list(ids))) if len(gt_query) else np.zeros(0, np.int64)
        row = {"group": name, "queries": len(ids), "positives": int(len(g)), "micro_ap": None,
               "recall_at_p90": None, "found_at_global_p90": None}
        if len(g):
            new_index = np.cumsum(in_group) - 1
            mi = res.match_index[g]
            sub_mi = np.where(mi >= 0, new_index[np.maximum(mi, 0)], -1)
            m = metrics_from_arrays(pairs.query[in_group], scores[in_group], res.is_positive[in_group], sub_mi, len(g))
            row["micro_ap"], row["recall_at_p90"] = m.micro_ap, m.recall_at_p90
            if res.threshold_at_p90 is not None:
                row["found_at_global_p90"] = float((pair_scores(res, mi) >= res.threshold_at_p90).mean())
        rows.append(row)
    return rows
