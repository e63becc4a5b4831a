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

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import check_config, config_dict, load_config, save_config
from .errors import UserError
from .io import (
    MAX_SUBMISSION_DIM,
    Descriptors,
    atomic_path,
    check_vectors,
    read_descriptors,
    read_json,
    write_descriptors,
    write_json,
)

METHODS = ("nes", "whiten", "none")
NORM_FILE = "norm.npz"
CONFIG_FILE = "config.json"
CONFIG_KIND = "normalizer"
RUN_KIND = "normalized descriptors"
EIG_FLOOR = 1e-6  # eigenvalues below EIG_FLOOR * largest are raised to it before whitening
BATCH = 4096  # rows per faiss search / matrix product; only a speed/memory knob


@dataclass
class NormConfig:
    """Settings of a fitted normaliser (saved as ``config.json`` next to ``norm.npz``)."""

    method: str = "nes"  # nes | whiten | none
    k: int = 10  # nes: training neighbours averaged per vector
    beta: float = 0.35  # nes: weight of the subtracted neighbour mean
    dba_k: int = 0  # nes: DBA neighbours for the training descriptors, 0 = no DBA
    dim: int = 256  # largest output dimension (<= 256 for the descriptor track)
    dba_alpha: float = 3.0  # nes: DBA weights are similarity ** dba_alpha (1st place: 3)

    def check(self) -> None:
        """Refuse settings that cannot work, before any data is read."""
        if self.method not in METHODS:
            raise UserError(f"unknown normalisation method {self.method!r} (choose from {', '.join(METHODS)})")
        if not 1 <= self.dim <= MAX_SUBMISSION_DIM:
            raise UserError(f"--dim must be between 1 and {MAX_SUBMISSION_DIM}, got {self.dim}")
        if self.method == "nes":
            if self.k < 1:
                raise UserError(f"--k must be at least 1, got {self.k}")
            if self.dba_k < 0:
                raise UserError(f"--dba-k must be 0 (off) or positive, got {self.dba_k}")
            if not np.isfinite(self.beta) or self.beta < 0:
                raise UserError(f"--beta must be a finite number >= 0, got {self.beta}")


# --------------------------------------------------------------------------- small helpers
def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; an all-zero row stays zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)


def _pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, top eigenvectors (d x r) and their eigenvalues of the covariance of `x`.

    Computed in float64 with `eigh` on the d x d covariance (d is a descriptor width, at most
    a few thousand), with a fixed sign per component so that refits are reproducible.
    """
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    xc = x64 - mean
    cov = xc.T @ xc / max(len(x64) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:n_components]
    vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    return mean, vecs, vals


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
    from .progress import progress_bar

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
        arrays: dict[str, np.ndarray] = {
            "input_dim": np.array(self.input_dim),
            "n_train": np.array(self.n_train),
        }
        for name in ("mean", "proj", "negatives"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = np.asarray(value, dtype=np.float32)
        with atomic_path(folder / NORM_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        save_config(folder / CONFIG_FILE, self.cfg, CONFIG_KIND)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Normalizer":
        """Read a fitted normaliser; missing or foreign folders are user errors."""
        folder = Path(folder)
        npz, cfg_path = folder / NORM_FILE, folder / CONFIG_FILE
        if not folder.is_dir():
            raise UserError(f"{folder}: normaliser folder not found (run `isc-qk normalize-fit` first)")
        for p in (npz, cfg_path):
            if not p.is_file():
                raise UserError(f"{p}: file not found (run `isc-qk normalize-fit` first)")
        if read_json(cfg_path).get("kind") != CONFIG_KIND:
            raise UserError(f"{cfg_path}: not a normaliser config")
        cfg = load_config(cfg_path, NormConfig)
        cfg.check()
        try:
            with np.load(npz) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise UserError(f"{npz}: not a valid normaliser file ({e})") from None
        if "input_dim" not in arrays or (cfg.method == "nes" and "negatives" not in arrays):
            raise UserError(f"{npz}: incomplete normaliser file")
        return cls(
            cfg=cfg,
            input_dim=int(arrays["input_dim"]),
            n_train=int(arrays.get("n_train", 0)),
            mean=arrays.get("mean"),
            proj=arrays.get("proj"),
            negatives=arrays.get("negatives"),
        )


# --------------------------------------------------------------------------- fitting
def fit_normalizer(train: Descriptors | np.ndarray, cfg: NormConfig, show_progress: bool = False) -> Normalizer:
    """Fit the fixed parameters of `cfg.method` on training descriptors only."""
    cfg.check()
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
        vals = np.maximum(vals, EIG_FLOOR * max(float(vals[0]), 1e-30))
        norm.mean, norm.proj = _as_f32(mean, vecs / np.sqrt(vals))
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


# --------------------------------------------------------------------------- file-level stages
@dataclass
class FitResult:
    out_dir: Path
    method: str
    n_train: int
    input_dim: int
    output_dim: int
    skipped: bool  # True when the folder already held this fit of these training files


TRAIN_FILE = "train.json"  # fingerprints of the training files a normaliser was fitted on


def fit_normalizer_files(
    train_paths: str | os.PathLike | list[str | os.PathLike], cfg: NormConfig, out_dir: str | os.PathLike
) -> FitResult:
    """`isc-qk normalize-fit`: read training descriptors, fit, save the artifact folder.

    Idempotent: a folder that already holds a fit with the same settings on the same
    training bytes is kept as is; one made with other settings is refused (UserError) rather
    than silently replaced, because normalised files downstream were made with it.
    """
    cfg.check()
    out_dir = Path(out_dir)
    paths = [Path(train_paths)] if isinstance(train_paths, (str, os.PathLike)) else [Path(p) for p in train_paths]
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p}: file not found")
    train_sums = {"train_sha256": [_sha256(p) for p in paths]}
    same_cfg = check_config(out_dir / CONFIG_FILE, cfg, CONFIG_KIND)
    if same_cfg and (out_dir / NORM_FILE).is_file() and (out_dir / TRAIN_FILE).is_file():
        if read_json(out_dir / TRAIN_FILE) == train_sums:
            norm = Normalizer.load(out_dir)
            return FitResult(out_dir, cfg.method, norm.n_train, norm.input_dim, norm.output_dim, True)
    train = read_descriptors(paths)
    norm = fit_normalizer(train, cfg, show_progress=True)
    norm.save(out_dir)
    write_json(out_dir / TRAIN_FILE, train_sums)
    return FitResult(out_dir, cfg.method, norm.n_train, norm.input_dim, norm.output_dim, False)


@dataclass
class NormalizeRun:
    """What an output file was made from; saved as ``OUT.config.json`` to make re-runs free."""

    input: str
    input_sha256: str
    norm_sha256: str
    norm_config: dict


@dataclass
class NormalizeResult:
    out_path: Path
    n: int
    input_dim: int
    output_dim: int
    method: str
    skipped: bool  # True when the output was already up to date


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _count_rows(path: Path) -> int | None:
    """Rows of an existing output, or None if it is unreadable (then it is rewritten)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["vectors"].shape[0]) if "vectors" in f else None
    except OSError:
        return None


def run_config_path(out_path: str | os.PathLike) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".config.json")


def normalize_file(
    norm_dir: str | os.PathLike, in_path: str | os.PathLike, out_path: str | os.PathLike
) -> NormalizeResult:
    """`isc-qk normalize`: apply a fitted normaliser to one per-set descriptor file.

    Idempotent: if `out_path` already exists and was made from the same input bytes and the
    same normaliser, nothing is recomputed. Otherwise the output is (re)written atomically.
    """
    norm_dir, in_path, out_path = Path(norm_dir), Path(in_path), Path(out_path)
    norm = Normalizer.load(norm_dir)
    if not in_path.is_file():
        raise UserError(f"{in_path}: file not found")
    if in_path.resolve() == out_path.resolve():
        raise UserError(f"{out_path}: output must differ from the input file")
    run = NormalizeRun(
        input=str(in_path),
        input_sha256=_sha256(in_path),
        norm_sha256=_sha256(norm_dir / NORM_FILE),
        norm_config=config_dict(norm.cfg),
    )
    sidecar = run_config_path(out_path)
    if out_path.is_file() and sidecar.is_file():
        old = read_json(sidecar).get("config", {})
        same = {k: v for k, v in old.items() if k != "input"} == {
            k: v for k, v in config_dict(run).items() if k != "input"
        }
        n = _count_rows(out_path) if same else None
        if n is not None:
            return NormalizeResult(out_path, n, norm.input_dim, norm.output_dim, norm.cfg.method, True)
    desc = read_descriptors(in_path)
    result = norm.apply_descriptors(desc, show_progress=True)
    write_descriptors(out_path, result)
    save_config(sidecar, run, RUN_KIND)
    return NormalizeResult(out_path, len(desc.ids), norm.input_dim, norm.output_dim, norm.cfg.method, False)
