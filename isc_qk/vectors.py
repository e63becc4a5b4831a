"""Row-vector maths shared by every descriptor: L2 normalisation and the one PCA fit.

One PCA for the whole tool (GIST-PCA256, the PCA-256 of a frozen descriptor used as residual
start, the ImageNet-feature baseline, the reduction and whitening of score normalisation):
scikit-learn's exact ('full') SVD in float64, so refits are reproducible bit for bit and the
component signs are fixed (svd_flip).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .formats.pca import PCAModel


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; an all-zero row stays zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64)))  # as faiss.normalize_L2
    norms[norms == 0] = 1.0
    return (x / norms[:, None]).astype(np.float32)


def fit_pca(x: np.ndarray, dim: int, *, seed: int = 0, train_ids: Sequence[str] | None = None,
            whiten: bool = False) -> PCAModel:
    """Fit a PCA (whitening if asked: see `PCAModel`) on TRAINING vectors only; `seed` is
    recorded, not used.

    Raises ValueError (a caller bug) when there are fewer vectors than dimensions: stages
    check that first and explain it to the user.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of descriptors, got shape {x.shape}")
    if x.shape[0] < dim:
        raise ValueError(f"need at least {dim} training vectors to fit a {dim}-d PCA, got {x.shape[0]}")
    pca = PCA(n_components=dim, whiten=False, svd_solver="full")
    pca.fit(x.astype(np.float64))
    config = {"n_train": int(x.shape[0]), "seed": int(seed), "whiten": bool(whiten),
              "train_ids": list(train_ids) if train_ids is not None else None}
    return PCAModel(mean=pca.mean_, components=pca.components_, explained_variance=pca.explained_variance_,
                    config=config)
