"""Submission HDF5 (descriptor track): exactly ``query``, ``reference`` (float32),
``query_ids``, ``reference_ids`` (ASCII byte strings), ids sorted ascending, d <= 256."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import atomic_path, ensure_room
from .descriptors import Descriptors, check_vectors
from .hdf5 import check_rows, open_h5, read_ids, read_vectors
from .ids import ascii_ids, check_unique

MAX_SUBMISSION_DIM = 256


@dataclass
class Submission:
    query: Descriptors
    reference: Descriptors


def validate_submission(query: Descriptors, reference: Descriptors) -> None:
    """The descriptor-track rules: same dimension, d <= 256, finite, unique ids, non-empty."""
    check_vectors(query.vectors, "query descriptors")
    check_vectors(reference.vectors, "reference descriptors")
    if query.dim != reference.dim:
        raise UserError(f"query dimension {query.dim} differs from reference dimension {reference.dim}")
    if query.dim > MAX_SUBMISSION_DIM:
        raise UserError(f"descriptor dimension {query.dim} exceeds the track's limit of {MAX_SUBMISSION_DIM}")
    check_unique(query.ids, "query descriptors")
    check_unique(reference.ids, "reference descriptors")


def write_submission(path: str | os.PathLike, query: Descriptors, reference: Descriptors) -> None:
    """Write the official single-file submission, ids sorted ascending."""
    import h5py

    validate_submission(query, reference)
    q, r = query.sorted(), reference.sorted()
    ensure_room(path, sum(d.vectors.shape[0] * (d.vectors.shape[1] * 4 + 32) for d in (q, r)))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("query", data=q.vectors.astype(np.float32))
            f.create_dataset("reference", data=r.vectors.astype(np.float32))
            f.create_dataset("query_ids", data=ascii_ids(q.ids, "query"), dtype=h5py.string_dtype("ascii"))
            f.create_dataset("reference_ids", data=ascii_ids(r.ids, "reference"), dtype=h5py.string_dtype("ascii"))


def read_submission(path: str | os.PathLike) -> Submission:
    p = Path(path)
    with open_h5(p) as f:
        parts = []
        for vec, ids_name in (("query", "query_ids"), ("reference", "reference_ids")):
            x, ids = read_vectors(f, vec, p), read_ids(f, ids_name, p)
            check_rows(x, ids, vec, ids_name, p)
            parts.append(Descriptors(ids, x))
    q, r = parts
    validate_submission(q, r)
    return Submission(q, r)
