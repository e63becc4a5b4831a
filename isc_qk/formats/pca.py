"""PCA model files: ``NAME.npz`` (mean, components, explained_variance) + ``NAME.json``.

One format for every PCA the tool fits on training descriptors: the GIST-PCA256 baseline,
the PCA-256 of any frozen descriptor used as a residual start, the ImageNet-feature baseline
and the reduction inside score normalisation. The JSON beside the arrays records how the
model was fitted (n_train, seed, dims, training ids), so a descriptor file can always be
traced back to its PCA.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import atomic_path, save_npz

WHITEN_FLOOR = 1e-6  # smallest variance kept when whitening, relative to the largest


def floored_variance(var: np.ndarray) -> np.ndarray:
    """Variances raised to at least WHITEN_FLOOR x the largest: what every whitening divides
    by the square root of (a PCA start here, the `whiten` normaliser in `normalize`)."""
    var = np.asarray(var, np.float64)
    return np.maximum(var, WHITEN_FLOOR * max(float(var[0]), 1e-30))


@dataclass
class PCAModel:
    """Mean (D,) and components (dim, D), rows orthonormal, sorted by decreasing variance.

    ``config["whiten"]`` True: `transform` also divides each component by its training
    standard deviation (sqrt of `explained_variance`, floored at 1e-6 of the largest), so no
    direction dominates the distances (a handcrafted start such as GIST is dominated by its
    first components)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray | None = None
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32).reshape(-1)
        self.components = np.asarray(self.components, dtype=np.float32)
        if self.components.ndim != 2 or self.components.shape[1] != self.mean.shape[0]:
            raise ValueError(f"PCA components {self.components.shape} do not match mean {self.mean.shape}")
        if self.whiten and self.explained_variance is None:  # load() reports it as a bad PCA file
            raise ValueError("a whitening PCA needs explained_variance")

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def whiten(self) -> bool:
        return bool(self.config.get("whiten", False))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project rows: (x - mean) @ components.T as float32 (n, dim), divided by the components'
        standard deviations when the model whitens; never normalised."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected (n, {self.mean.shape[0]}) descriptors, got {x.shape}")
        # float64 product, then float32: BLAS sums in a batch-size-dependent order, and in float64
        # that never shows after rounding, so a shard's rows equal the unsharded run's rows.
        centred = x.astype(np.float64) - np.asarray(self.mean, np.float64)
        proj = centred @ np.asarray(self.components, np.float64).T
        if self.whiten:
            proj /= np.sqrt(floored_variance(self.explained_variance))
        return proj.astype(np.float32)

    def fingerprint_arrays(self) -> tuple[np.ndarray, ...]:
        if self.whiten:
            return (self.mean, self.components, np.asarray(self.explained_variance, np.float64))
        return (self.mean, self.components)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (.npz) and the .json beside it, both atomically."""
        path = npz_path(path)
        arrays = {"mean": self.mean, "components": self.components}
        if self.explained_variance is not None:
            arrays["explained_variance"] = np.asarray(self.explained_variance, dtype=np.float64)
        save_npz(path, **arrays)
        config = {"dim_in": self.input_dim, "dim_out": self.dim, "whiten": self.whiten, **self.config}
        with atomic_path(config_path(path)) as tmp:
            tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCAModel":
        """Read a model written by `save` (the JSON is optional); UserError if it is not one."""
        path = npz_path(path)
        if not path.is_file():
            raise UserError(f"{path}: PCA file not found")
        try:
            with np.load(path) as z:
                mean, comps = z["mean"], z["components"]
                var = z["explained_variance"] if "explained_variance" in z.files else None
            cfg_file = config_path(path)
            config = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
            if not isinstance(config, dict):
                raise ValueError(f"{cfg_file.name} is not a JSON object")
            model = cls(mean=mean, components=comps, explained_variance=var, config=config)
            arrays = (model.mean, model.components) + (() if var is None else (np.asarray(var, np.float64),))
            if not all(np.isfinite(a).all() for a in arrays) or model.dim == 0 or model.input_dim == 0:
                raise ValueError("empty, or holds NaN or inf")
            return model
        except Exception as e:  # zip, pickle, key and shape errors of a damaged or foreign file
            raise UserError(f"{path}: not a PCA file ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def npz_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_suffix(".npz")


def config_path(npz: str | os.PathLike) -> Path:
    """The JSON file that sits beside a PCA .npz (same name, .json suffix)."""
    return Path(npz).with_suffix(".json")
