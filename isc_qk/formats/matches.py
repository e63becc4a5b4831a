"""`isc-qk match` output: a CSV of (query, reference) pairs and a JSON beside it.

CSV header ``query_id,reference_id,score,rank,decision``; one row per retrieved pair, grouped
by query (queries in id order), best first. ``score`` is minus the squared L2 distance (the
evaluation's score, so `evaluate-uap` thresholds apply as they are), written exactly (the
shortest text that reads back as the same number, like the JSON's threshold, so ``score >=
threshold`` in a script gives the ``decision`` column); ``rank`` is the reference's rank among ALL
references for that query (1 = nearest); ``decision`` is ``match`` when score >= threshold,
``no_match`` below it, empty when no threshold was given. Plain CSV (no comment lines), so
``pandas.read_csv`` reads it as it is.

Where the threshold came from (a calibration file at a precision, or a number given) and what
was searched lives in the JSON beside it, ``OUT.json`` (``matches.csv`` -> ``matches.csv.json``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_json

MATCH_COLUMNS = ("query_id", "reference_id", "score", "rank", "decision")
MATCH_KIND = "isc-qk matches"
MATCH = "match"
NO_MATCH = "no_match"


def matches_sidecar(path: str | os.PathLike) -> Path:
    """``matches.csv`` -> ``matches.csv.json``: the threshold's source and the run's inputs."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def write_matches(path: str | os.PathLike, query_ids: np.ndarray, reference_ids: np.ndarray, scores: np.ndarray,
                  ranks: np.ndarray, decisions: np.ndarray, meta: dict) -> None:
    """Write the CSV (atomically), then its JSON; `decisions`: 1 match, 0 no match, -1 undecided."""
    import pandas as pd

    labels = np.array(["", NO_MATCH, MATCH], dtype=object)[np.asarray(decisions, np.int64) + 1]
    frame = pd.DataFrame({"query_id": np.asarray(query_ids, dtype=object),
                          "reference_id": np.asarray(reference_ids, dtype=object),
                          "score": np.asarray(scores, np.float64), "rank": np.asarray(ranks, np.int64),
                          "decision": labels}, columns=list(MATCH_COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    write_json(matches_sidecar(path), {"kind": MATCH_KIND, "csv": Path(path).name,
                                       "columns": list(MATCH_COLUMNS), **meta})


def is_matches_csv(path: Path) -> bool:
    """An earlier output of `match` (so it may be replaced): our header on the first line."""
    try:
        with open(path, newline="") as fh:
            return tuple(next(csv.reader(fh), ())) == MATCH_COLUMNS
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def is_matches_json(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("kind") == MATCH_KIND
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False
