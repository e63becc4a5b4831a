"""Reading HDF5 datasets with one-line errors (shared by the per-set and submission layouts)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .ids import image_id


def open_h5(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file") from None


def read_dataset(f, name: str, path: Path) -> np.ndarray:
    import h5py

    if name not in f:
        raise UserError(f"{path}: missing dataset {name!r} (has: {', '.join(sorted(f.keys())) or 'none'})")
    if not isinstance(f[name], h5py.Dataset):
        raise UserError(f"{path}: {name!r} is an HDF5 group, expected a dataset")
    return f[name][()]


def read_vectors(f, name: str, path: Path) -> np.ndarray:
    x = read_dataset(f, name, path)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{path}: dataset {name!r} must be floating point, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def read_ids(f, name: str, path: Path) -> list[str]:
    raw = read_dataset(f, name, path)
    if raw.ndim != 1:
        raise UserError(f"{path}: dataset {name!r} must be 1-D, got shape {raw.shape}")
    if raw.size and not isinstance(raw.flat[0], (bytes, str)):
        raise UserError(f"{path}: dataset {name!r} must hold strings, got {raw.dtype}")
    try:
        return [image_id(v) for v in raw]
    except UnicodeDecodeError:
        raise UserError(f"{path}: dataset {name!r} holds non-ASCII ids") from None
