"""A fitted score normaliser on disk: ``FOLDER/norm.npz`` (arrays) + ``FOLDER/config.json``.

Arrays: ``input_dim``, ``n_train`` and, depending on the method, ``mean`` / ``proj`` (the
centre-and-project step) and ``negatives`` (the training vectors nes subtracts from).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import save_npz

NORM_FILE = "norm.npz"


def save_normalizer_arrays(folder: str | os.PathLike, arrays: dict[str, np.ndarray | None]) -> None:
    kept = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    save_npz(Path(folder) / NORM_FILE, **kept)


def load_normalizer_arrays(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    npz = Path(folder) / NORM_FILE
    if not npz.is_file():
        raise UserError(f"{npz}: file not found (run `isc-qk normalize-fit` first)")
    try:
        with np.load(npz) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:  # zip/pickle/shape errors of a damaged file
        raise UserError(f"{npz}: not a valid normaliser file ({type(e).__name__})") from None
