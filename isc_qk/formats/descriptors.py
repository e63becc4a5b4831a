"""Per-set descriptor HDF5, exactly as the official ISC2021 baselines write it.

Dataset ``vectors`` (float32, n x d) and dataset ``image_names`` (ASCII byte strings).
Readers strip any directory and a ``.jpg``/``.png`` suffix, so ids are file stems.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import atomic_path, ensure_room
from .hdf5 import check_rows, open_h5, read_ids, read_vectors
from .ids import ascii_ids, check_unique


def check_vectors(x: np.ndarray, what: str) -> None:
    """Refuse a descriptor matrix that is not 2-D, is empty, or holds NaN/inf."""
    if x.ndim != 2:
        raise UserError(f"{what}: expected a 2-D array of vectors, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"{what}: empty descriptor set (shape {x.shape})")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise UserError(f"{what}: {bad} vector(s) contain NaN or inf")


@dataclass
class Descriptors:
    """A set of image descriptors: ids[i] is the image of row i of vectors."""

    ids: list[str]
    vectors: np.ndarray  # float32, n x d

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.vectors):
            raise UserError(f"{len(self.ids)} ids for {len(self.vectors)} vectors")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def sorted(self) -> "Descriptors":
        order = np.argsort(np.array(self.ids, dtype=object), kind="stable")
        return Descriptors([self.ids[i] for i in order], self.vectors[order])


def read_descriptors(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Descriptors:
    """Read one or several per-set HDF5 files and stack them (official baseline layout)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    all_ids: list[str] = []
    parts: list[np.ndarray] = []
    dim = None
    for p in paths:
        p = Path(p)
        with open_h5(p) as f:
            x = read_vectors(f, "vectors", p)
            ids = read_ids(f, "image_names", p)
        check_rows(x, ids, "vectors", "image_names", p)
        if dim is not None and x.shape[1] != dim:
            raise UserError(f"{p}: dimension {x.shape[1]} differs from {dim} in the other files")
        dim = x.shape[1]
        all_ids += ids
        parts.append(x)
    if not parts:
        raise UserError("no descriptor file given")
    vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
    what = ", ".join(str(p) for p in paths)
    check_vectors(vectors, what)
    check_unique(all_ids, what)
    return Descriptors(all_ids, vectors)


def write_descriptors(path: str | os.PathLike, desc: Descriptors) -> None:
    """Write the official per-set layout: `vectors` float32 and `image_names` ASCII bytes."""
    import h5py

    check_vectors(desc.vectors, str(path))
    check_unique(desc.ids, str(path))
    names = ascii_ids(desc.ids, str(path))
    ensure_room(path, desc.vectors.shape[0] * (desc.vectors.shape[1] * 4 + 32))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("vectors", data=np.asarray(desc.vectors, dtype=np.float32))
            f.create_dataset("image_names", data=names, dtype=h5py.string_dtype("ascii"))


def count_rows(path: str | os.PathLike) -> int | None:
    """Rows of an existing per-set file, or None if it is unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["vectors"].shape[0]) if "vectors" in f else None
    except OSError:
        return None
