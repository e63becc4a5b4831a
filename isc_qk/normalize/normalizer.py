"""Score normalisation folded into each descriptor, with statistics of the TRAINING set only.

Why: every top ISC21 descriptor-track entry normalised its scores with training-set
statistics; that step alone took the official MultiGrain baseline from 0.165 to 0.364
micro-AP. The descriptor-track rules allow a descriptor to depend only on its own image and
on fixed parameters, so the statistics are fitted once on training descriptors, saved as an
artifact (``norm.npz`` + ``config.json``), and then applied to each vector on its own: the
normalised descriptor of an image never depends on any other query or reference image.

Methods (``NormConfig.method``):

* ``nes`` - negative-embedding subtraction, the 1st-place method (lyakaap,
  "ISC21-Descriptor-Track-1st", ``scripts/postprocess.py``; arXiv 2112.04323). What that
  code does, and what this module matches:

  - optional database-side augmentation (DBA) of the training descriptors first: each
    training vector t is replaced by ``sum_j t_j * s_j**alpha`` over its ``dba_k`` nearest
    training vectors (itself included, inner product) with similarity ``s_j``, ``alpha = 3``,
    then L2-normalised. (They used k = 10; here ``dba_k = 0`` turns it off. Negative
    similarities are clipped to 0 so that a non-integer ``alpha`` stays defined.)
  - for every query AND reference x (L2-normalised): find its k = 10 nearest (augmented)
    training vectors by inner product (faiss ``IndexFlatIP``), set
    ``x <- x - beta * mean(those k vectors)`` with ``beta = 0.35``, then L2-normalise. They
    ran one iteration for both sides in the final submission; so does this module.

* ``whiten`` - PCA-whitening fitted on the L2-normalised training descriptors, keeping
  ``dim`` components, then L2-normalise. Eigenvalues are floored at ``1e-6`` times the
  largest so that near-null directions cannot blow up.

* ``none`` - the descriptors as they are (the baseline row of the results table).

Descriptors wider than ``dim`` (the track allows at most 256) are first brought down to
``dim`` by a PCA fitted on the same training descriptors (L2-normalise, centre, project,
like the official GIST-PCA baseline; ``nes`` re-normalises after it). So every output has
at most ``dim`` <= 256 dimensions, is float32 and finite.

Batching is only for speed: each row's kNN search and projection use that row alone, so a
vector normalised inside a big set equals the same vector normalised on its own (up to
float rounding of the BLAS kernels, ~1e-7).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..configs import NormConfig, from_dict, to_dict
from ..errors import UserError
from ..formats.atomic import read_json, write_json
from ..formats.descriptors import Descriptors, check_vectors
from ..formats.normalizer import load_normalizer_arrays, save_normalizer_arrays
from ..formats.pca import floored_variance
from ..vectors import fit_pca, l2_normalize

CONFIG_FILE = "config.json"
CONFIG_KIND = "normalizer"
BATCH = 4096  # rows per faiss search / matrix product; only a speed/memory knob


# --------------------------------------------------------------------------- small helpers
def _pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (d,), top components as columns (d x r) and their variances, by the one PCA."""
    if len(x) < n_components:
        raise UserError(f"reducing to {n_components} dimensions needs at least {n_components} training "
                        f"descriptors, got {len(x)}")
    p = fit_pca(x, n_components)
    return p.mean.astype(np.float64), p.components.T.astype(np.float64), np.asarray(p.explained_variance, np.float64)


def _knn_mean(index, negatives: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k nearest `negatives` (inner product) of each row of `x`."""
    _, ind = index.search(np.ascontiguousarray(x, dtype=np.float32), k)
    return negatives[ind].mean(axis=1)


def _flat_ip(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _batches(n: int, desc: str, show: bool):
    """Row ranges of size BATCH, with a progress bar when there is more than one."""
    starts = list(range(0, n, BATCH))
    if not show or len(starts) <= 1:
        yield from ((s, min(s + BATCH, n)) for s in starts)
        return
    from ..ui import progress_bar

    with progress_bar(transient=True) as bar:
        task = bar.add_task(desc, total=n)
        for s in starts:
            e = min(s + BATCH, n)
            yield s, e
            bar.advance(task, e - s)


# --------------------------------------------------------------------------- the normaliser
@dataclass
class Normalizer:
    """Fixed, training-derived parameters that map one descriptor to its normalised form.

    ``mean``/``proj`` (optional): centre-and-project step (PCA reduction to ``dim``, or the
    whitening matrix); ``negatives``: the (DBA-augmented, L2-normalised) training vectors
    that ``nes`` subtracts from, already in the projected space.
    """

    cfg: NormConfig
    input_dim: int
    n_train: int
    mean: np.ndarray | None = None  # (input_dim,) float32
    proj: np.ndarray | None = None  # (input_dim, output_dim) float32
    negatives: np.ndarray | None = None  # (n_train, output_dim) float32, nes only
    _index: object = field(default=None, repr=False, compare=False)

    @property
    def output_dim(self) -> int:
        return int(self.proj.shape[1]) if self.proj is not None else self.input_dim

    # ---------------------------------------------------------------- applying
    def apply(self, x: np.ndarray, show_progress: bool = False) -> np.ndarray:
        """Normalise the rows of `x` (n x input_dim); each row depends only on itself."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None, :]
        check_vectors(x, "descriptors to normalise")
        if x.shape[1] != self.input_dim:
            raise UserError(
                f"descriptors have dimension {x.shape[1]} but the normaliser was fitted on "
                f"{self.input_dim}-d training descriptors"
            )
        out = np.empty((len(x), self.output_dim), dtype=np.float32)
        for s, e in _batches(len(x), f"normalise ({self.cfg.method})", show_progress):
            out[s:e] = self._apply_batch(np.asarray(x[s:e], dtype=np.float32))
        if not np.isfinite(out).all():  # pragma: no cover - guarded by the steps above
            raise RuntimeError("normalisation produced non-finite values")
        return out

    def _apply_batch(self, x: np.ndarray) -> np.ndarray:
        method = self.cfg.method
        if method == "none":
            return self._project(l2_normalize(x)) if self.proj is not None else x
        x = l2_normalize(x)
        if self.proj is not None:
            x = self._project(x)
        if method == "whiten":
            return l2_normalize(x)
        if self.proj is not None:
            x = l2_normalize(x)  # nes works on unit vectors: inner product = cosine similarity
        if self._index is None:
            self._index = _flat_ip(self.negatives)
        x = x - np.float32(self.cfg.beta) * _knn_mean(self._index, self.negatives, x, self.cfg.k)
        return l2_normalize(x)

    def _project(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.proj).astype(np.float32, copy=False)

    def apply_descriptors(self, desc: Descriptors, show_progress: bool = False) -> Descriptors:
        """Same ids, normalised vectors."""
        return Descriptors(list(desc.ids), self.apply(desc.vectors, show_progress))

    # ---------------------------------------------------------------- artifact
    def save(self, folder: str | os.PathLike) -> None:
        """Write ``norm.npz`` (arrays) and ``config.json`` (settings) atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        f32 = lambda v: None if v is None else np.asarray(v, dtype=np.float32)  # noqa: E731
        save_normalizer_arrays(folder, {"method": np.array(self.cfg.method), "input_dim": np.array(self.input_dim),
                                        "n_train": np.array(self.n_train), "mean": f32(self.mean), "proj": f32(self.proj),
                                        "negatives": f32(self.negatives)})
        write_json(folder / CONFIG_FILE, {"kind": CONFIG_KIND, "config": to_dict(self.cfg)})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Normalizer":
        """Read a fitted normaliser; missing or foreign folders are user errors."""
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not folder.is_dir():
            raise UserError(f"{folder}: normaliser folder not found (run `isc-qk normalize-fit` first)")
        if not cfg_path.is_file():
            raise UserError(f"{cfg_path}: file not found (run `isc-qk normalize-fit` first)")
        meta = read_json(cfg_path)
        if meta.get("kind") != CONFIG_KIND:
            raise UserError(f"{cfg_path}: not a normaliser config")
        cfg = from_dict(NormConfig, meta.get("config"), str(cfg_path))
        cfg.validate()
        arrays = load_normalizer_arrays(folder)
        why = _arrays_problem(arrays, cfg)
        if why:
            raise UserError(f"{folder / 'norm.npz'}: does not hold a {cfg.method} normaliser as {cfg_path.name} says "
                            f"({why}); fit it again with `isc-qk normalize-fit`")
        return cls(cfg=cfg, input_dim=int(arrays["input_dim"]), n_train=int(arrays.get("n_train", 0)),
                   mean=arrays.get("mean"), proj=arrays.get("proj"), negatives=arrays.get("negatives"))


def _arrays_problem(a: dict[str, np.ndarray], cfg: NormConfig) -> str | None:
    """Why the arrays of a ``norm.npz`` cannot be the `cfg.method` normaliser they claim, or None.

    Each method leaves its own set of arrays (`fit_normalizer`): ``none`` and ``nes`` project
    only inputs wider than ``dim``, ``whiten`` always projects, only ``nes`` has negatives. The
    file also names its method (files written since it does); everything must agree.
    """
    def scalar_int(k: str) -> int | None:
        v = a.get(k)
        return int(v) if v is not None and v.ndim == 0 and np.issubdtype(v.dtype, np.integer) else None

    method = a.get("method")
    if method is not None and (method.ndim != 0 or str(method) != cfg.method):
        return f"its arrays are a {method} normaliser's"
    if "input_dim" not in a or (cfg.method == "nes" and "negatives" not in a):
        return "incomplete: input_dim or the nes negatives are missing"
    d, n = scalar_int("input_dim"), scalar_int("n_train")
    if d is None or d < 1 or n is None or n < 0:
        return "input_dim / n_train are not counts"
    mean, proj, neg = a.get("mean"), a.get("proj"), a.get("negatives")
    for k in ("mean", "proj", "negatives"):
        if a.get(k) is not None and (not np.issubdtype(a[k].dtype, np.floating) or not np.isfinite(a[k]).all()):
            return f"{k} is not finite floating point"
    if (mean is None) != (proj is None):
        return "mean and proj come together"
    if cfg.method == "whiten" and proj is None:
        return "whitening needs mean and proj"
    if cfg.method in ("none", "nes") and (proj is not None) != (d > cfg.dim):
        return f"a {d}-d input is projected only when wider than --dim {cfg.dim}"
    if proj is not None:
        if mean.shape != (d,) or proj.ndim != 2 or proj.shape[0] != d or not 1 <= proj.shape[1] <= cfg.dim:
            return f"mean {mean.shape} / proj {proj.shape} do not fit {d}-d inputs"
    out = proj.shape[1] if proj is not None else d
    if (cfg.method == "nes") != (neg is not None):
        return "only nes keeps negatives"
    if neg is not None and (neg.ndim != 2 or neg.shape[1] != out or len(neg) < cfg.k or len(neg) != n):
        return f"negatives {neg.shape} do not fit {n} training vectors of {out} dims and --k {cfg.k}"
    return None


# --------------------------------------------------------------------------- fitting
def fit_normalizer(train: Descriptors | np.ndarray, cfg: NormConfig, show_progress: bool = False) -> Normalizer:
    """Fit the fixed parameters of `cfg.method` on training descriptors only."""
    cfg.validate()
    x = train.vectors if isinstance(train, Descriptors) else np.asarray(train)
    check_vectors(x, "training descriptors")
    x = np.asarray(x, dtype=np.float32)
    n, d = x.shape
    out_dim = min(cfg.dim, d)
    norm = Normalizer(cfg=cfg, input_dim=d, n_train=n)

    if cfg.method == "none":
        if d > cfg.dim:
            norm.mean, norm.proj, _ = _as_f32(*_pca(l2_normalize(x), out_dim))
        return norm

    xn = l2_normalize(x)
    if cfg.method == "whiten":
        if n <= out_dim:
            raise UserError(
                f"whitening to {out_dim} dimensions needs more than {out_dim} training descriptors, got {n}"
            )
        mean, vecs, vals = _pca(xn, out_dim)
        norm.mean, norm.proj = _as_f32(mean, vecs / np.sqrt(floored_variance(vals)))
        return norm

    # nes
    if cfg.k > n:
        raise UserError(f"--k {cfg.k} is larger than the {n} training descriptors")
    if cfg.dba_k > n:
        raise UserError(f"--dba-k {cfg.dba_k} is larger than the {n} training descriptors")
    if d > cfg.dim:
        norm.mean, norm.proj, _ = _as_f32(*_pca(xn, out_dim))
        xn = l2_normalize(norm._project(xn))
    norm.negatives = _dba(xn, cfg.dba_k, cfg.dba_alpha, show_progress) if cfg.dba_k > 0 else xn
    return norm


def _dba(t: np.ndarray, k: int, alpha: float, show_progress: bool) -> np.ndarray:
    """Database-side augmentation of the training vectors (1st-place definition, see top)."""
    index = _flat_ip(t)
    out = np.empty_like(t)
    for s, e in _batches(len(t), "DBA on training descriptors", show_progress):
        sim, ind = index.search(t[s:e], k)
        w = np.clip(sim, 0.0, None) ** np.float32(alpha)
        out[s:e] = (t[ind] * w[:, :, None]).sum(axis=1)
    return l2_normalize(out)


def _as_f32(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in arrays)
