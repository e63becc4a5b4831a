"""Reading HDF5 datasets with one-line errors (shared by the per-set and submission layouts)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .ids import check_ids, image_id


def open_h5(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError):  # h5py: not HDF5, truncated, damaged superblock
        raise UserError(f"{path}: not an HDF5 file (or a damaged one)") from None


def read_dataset(f, name: str, path: Path) -> np.ndarray:
    import h5py

    try:
        if name not in f:
            raise UserError(f"{path}: missing dataset {name!r} (has: {', '.join(sorted(f.keys())) or 'none'})")
        if not isinstance(f[name], h5py.Dataset):
            raise UserError(f"{path}: {name!r} is an HDF5 group, expected a dataset")
        return f[name][()]
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:  # truncated data, odd types
        raise UserError(f"{path}: cannot read dataset {name!r} ({' '.join(str(e).split())[:160]})") from None


def read_vectors(f, name: str, path: Path) -> np.ndarray:
    x = read_dataset(f, name, path)
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{path}: dataset {name!r} must be floating point, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2:
        raise UserError(f"{path}: dataset {name!r} must be 2-D (n x d), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _unit_columns_not_rows(x: np.ndarray) -> bool:
    """A square matrix whose COLUMNS are unit vectors and whose rows are not: L2-normalised
    descriptors stored d x n (the one case where the shape alone cannot tell). Not judged below
    4 x 4, where a few hand-made vectors can look like that by design."""
    if x.shape[0] < 4:
        return False
    cols = np.linalg.norm(x.astype(np.float64), axis=0)
    rows = np.linalg.norm(x.astype(np.float64), axis=1)
    unit = lambda v: bool(np.all(np.abs(v - 1) < 1e-3))  # noqa: E731
    return unit(cols) and not unit(rows)


def check_rows(x: np.ndarray, ids: list[str], name: str, ids_name: str, path: Path) -> None:
    """One id per row; vectors stored d x n (transposed) are named as such."""
    if len(ids) == x.shape[0] and not (x.shape[0] == x.shape[1] and _unit_columns_not_rows(x)):
        return
    if len(ids) == x.shape[1] and (len(ids) != x.shape[0] or _unit_columns_not_rows(x)):
        raise UserError(f"{path}: {name!r} has shape {x.shape}: it looks transposed (d x n); "
                        f"store one row per id of {ids_name!r} ({len(ids)} x d)")
    label = "ids" if ids_name.endswith("_ids") else ids_name
    raise UserError(f"{path}: {len(ids)} {label} for {x.shape[0]} vectors in {name!r}")


def read_ids(f, name: str, path: Path) -> list[str]:
    raw = read_dataset(f, name, path)
    if not isinstance(raw, np.ndarray) or raw.ndim != 1:
        raise UserError(f"{path}: dataset {name!r} must be 1-D, got shape {getattr(raw, 'shape', ())}")
    if raw.size and not all(isinstance(v, (bytes, str)) for v in raw):
        raise UserError(f"{path}: dataset {name!r} must hold strings, got {raw.dtype}")
    try:
        ids = [image_id(v) for v in raw]
    except UnicodeDecodeError:
        raise UserError(f"{path}: dataset {name!r} holds non-ASCII ids") from None
    check_ids(ids, f"{path}: {name!r}", unique=False)
    return ids
