"""The Python API: what a notebook needs, importable from one place.

    import isc_qk.api as qk

    pca = qk.fit_pca("data/train", "work/sscd", descriptor="sscd")          # a baseline start
    refs = qk.describe("data/references", pca=pca, out="work/refs.h5")      # -> Descriptors
    queries = qk.describe("data/queries", pca=pca)
    result = qk.evaluate(queries, refs, "data/ground_truth.csv")            # -> EvalResult
    print(qk.metrics(result))                                                # the evaluate-uap JSON

    model = qk.init_model(pca, "work/m0", backbone="efficientnet-lite0")
    qk.augment("data/train", "work/aug", copies=2)
    qk.run_phase(model, "q", train_images="data/train", augmented="work/aug", out="work/Q1")
    m = qk.load_model("work/Q1")
    v = m.describe([array_hxwx3_uint8, ...], side="q")                      # arrays, PIL images or a folder
    matches = qk.match(refs, images="new/", model="work/Q1", calibration="work/eval.json")  # DataFrame

Every function calls the same stage the command line calls (`qk.describe.describe`,
`evaluation.evaluate.evaluate`, `qk.train.train`, `matching.stage.match`...), so a result
from Python is the result of the command: same files, same records, same resumability, same
one-line `UserError` for bad input. Arrays are described through lossless PNG files in a
temporary folder: the one image decoder every stage uses then sees exactly these pixels.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .errors import UserError
from .evaluation.evaluate import EvalResult
from .formats import Descriptors, GroundTruth, read_descriptors, read_ground_truth, write_descriptors
from .matching import DEFAULT_PRECISION, DEFAULT_TOP_K

if TYPE_CHECKING:
    import pandas as pd

    from .models.qk_model import QKModel
    from .qk.train import TrainReport

PathLike = Union[str, os.PathLike]
Images = Union[PathLike, np.ndarray, Sequence[Any]]  # a folder, an N x H x W x 3 array, arrays / PIL images

__all__ = [
    "Descriptors", "EvalResult", "GroundTruth", "Model", "UserError",
    "augment", "describe", "evaluate", "fit_pca", "init_model", "inspect", "load_model", "match", "metrics",
    "precompute", "read_descriptors", "read_ground_truth", "run_phase", "write_descriptors",
]


# ---------------------------------------------------------------------------- models
@dataclass
class Model:
    """A QK model folder: `path`, and the loaded Keras model (`keras_model`) on first use."""

    path: Path
    _loaded: "QKModel | None" = field(default=None, repr=False, compare=False)

    @property
    def keras_model(self) -> "QKModel":
        """The Q and K backbones and heads (`models.qk_model.QKModel`), e.g. for `describe` on tensors."""
        if self._loaded is None:
            from .models.qk_model import QKModel

            self._loaded = QKModel.load(self.path)
        return self._loaded

    @property
    def config(self) -> dict:
        from .configs import to_dict

        return to_dict(self.keras_model.cfg)

    def describe(self, images: Images, side: str = "q", **kw) -> Descriptors:
        """Descriptors of `images` with this model's `side` (q: queries, k: references); see `describe`."""
        return describe(images, model=self, side=side, **kw)

    def __fspath__(self) -> str:
        return str(self.path)


def load_model(path: PathLike) -> Model:
    """A QK model folder (init-model, train-q/k, pipeline's WORK/models/*); checked now."""
    model = Model(Path(path))
    model.keras_model  # a missing or damaged folder is a UserError here, not later
    return model


def init_model(pca: PathLike, out: PathLike, *, backbone: str = "efficientnet-lite0",
               backbone_weights: str | None = "auto", **model_options: Any) -> Model:
    """Create an untrained model folder (`isc-qk init-model`) on a fitted start PCA; options are
    `configs.ModelConfig` fields (head_hidden, residual_scale, head_shortcut, freeze_backbone...).
    `backbone_weights` "auto": ImageNet for a trainable backbone, none for a frozen ONNX one
    (sscd, onnx:PATH: its weights are the file)."""
    from .configs import ModelConfig
    from .encoders import is_trainable, parse
    from .formats.pca import PCAModel
    from .models.init import init_model as _init
    from .starts.stage import resolve_pca_file
    from .starts.start import fitted_on

    if backbone_weights == "auto":
        backbone_weights = "imagenet" if is_trainable(parse(backbone, "backbone")) else None
    pca_file = resolve_pca_file(pca)
    fitted = PCAModel.load(pca_file)
    cfg = ModelConfig(backbone=backbone, backbone_weights=backbone_weights,
                      **{"residual": fitted_on(fitted), "dim": fitted.dim, **model_options})
    return load_model(_init(pca_file, cfg, out))


# ---------------------------------------------------------------------------- data
def augment(images: PathLike, out: PathLike, *, copies: int = 1, seed: int = 0, workers: int = 1,
            progress: bool = True) -> Path:
    """Edited copies of every image + manifest.csv (`isc-qk augment`); resumable. Returns `out`."""
    from .augment.runner import augment_folder
    from .configs import AugmentConfig

    augment_folder(images, out, AugmentConfig(seed=seed, copies=copies), workers=workers, progress=progress)
    return Path(out)


def fit_pca(train: PathLike, out: PathLike, *, descriptor: str = "gist", dim: int = 256,
            n_train: int | None = 10000, whiten: bool = False, seed: int = 0, workers: int = 1) -> Path:
    """Fit a frozen descriptor's PCA on training images (`gist-pca` / `descriptor-pca --train`):
    descriptor gist, sscd, sscd-distilled or onnx:PATH. Returns the pca.npz path."""
    from .configs import PCAFitConfig
    from .starts.stage import fit_start_pca

    return fit_start_pca(descriptor, train, out, PCAFitConfig(n_train=n_train, seed=seed, dim=dim, whiten=whiten),
                         workers=workers)


# ---------------------------------------------------------------------------- describing
def describe(images: Images, *, model: Model | PathLike | None = None, pca: PathLike | None = None,
             side: str = "q", ids: Sequence[str] | None = None, out: PathLike | None = None, batch: int = 32,
             workers: int = 2, progress: bool = True) -> Descriptors:
    """Descriptors of images with a QK model's `side` (`model`), or with a frozen descriptor's
    PCA (`pca`: the GIST-PCA / SSCD-PCA baselines).

    `images`: a folder (ids = file stems), an N x H x W x 3 uint8 array, or a sequence of such
    arrays or PIL images (ids: `ids`, default ``img000000``...). `out`: keep the HDF5 there
    (resumable; `isc-qk describe`'s file); by default it lives in a temporary folder.
    """
    if (model is None) == (pca is None):
        raise UserError("describe needs model= (a QK model) or pca= (a frozen descriptor's PCA), not both")
    with tempfile.TemporaryDirectory(prefix="isc-qk-") as tmp:
        folder = Path(images) if isinstance(images, (str, os.PathLike)) else _write_images(images, ids, Path(tmp))
        target = Path(out) if out is not None else Path(tmp) / "descriptors.h5"
        if model is not None:
            from .qk.describe import describe as _describe

            rep = _describe(os.fspath(model), side, folder, target, batch=batch, workers=workers, progress=progress)
            bad = rep.bad
        else:
            from .starts.stage import describe_start_set

            bad = describe_start_set(pca, folder, target, workers=workers, progress=progress).failures
        if bad and not isinstance(images, (str, os.PathLike)):
            raise UserError(f"{len(bad)} of the given images could not be described: {bad[0]}")
        return read_descriptors(target)


def _write_images(images, ids: Sequence[str] | None, tmp: Path) -> Path:
    """Arrays / PIL images -> lossless PNG files named by id (the stages' input)."""
    from PIL import Image

    from .formats.ids import image_id

    items = list(images)
    if not items:
        raise UserError("no images given")
    ids = list(ids) if ids is not None else [f"img{i:06d}" for i in range(len(items))]
    if len(ids) != len(items) or len(set(ids)) != len(ids):
        raise UserError(f"need {len(items)} distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
    folder = tmp / "images"
    folder.mkdir()
    for i, (name, im) in enumerate(zip(ids, items)):
        if image_id(name + ".png") != name or "/" in name or not name.isascii():
            raise UserError(f"id {name!r} cannot be a file name (ASCII, no '/', no image suffix)")
        if not isinstance(im, Image.Image):
            a = np.asarray(im)
            if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
                raise UserError(f"image {i}: expected uint8 H x W (x 1/3/4) pixels, got {a.dtype} {a.shape}")
            im = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
        im.save(folder / f"{name}.png")
    return folder


# ---------------------------------------------------------------------------- evaluating
def _descriptors(x: Descriptors | PathLike | Sequence[PathLike]) -> Descriptors:
    return x if isinstance(x, Descriptors) else read_descriptors(x)


def evaluate(query: Descriptors | PathLike, reference: Descriptors | PathLike, ground_truth: GroundTruth | PathLike,
             *, max_results: int | None = None, knn: int | None = None, all_queries: bool = False,
             threads: int | None = None, progress: bool = False) -> EvalResult:
    """The exact ISC2021 evaluation (`isc-qk evaluate-uap`): micro-AP, recall@P90 and its
    threshold, rank recalls, the PR curve, and the scored list itself (`result.pairs`)."""
    gt = ground_truth if isinstance(ground_truth, GroundTruth) else read_ground_truth(ground_truth)
    from .evaluation.evaluate import evaluate as _evaluate

    return _evaluate(_descriptors(query), _descriptors(reference), gt, max_results=max_results, knn=knn,
                     all_queries=all_queries, threads=threads, progress=progress)


def metrics(result: EvalResult, path: PathLike | None = None) -> dict:
    """The numbers of an evaluation as `evaluate-uap --json` writes them (and write them to `path`:
    the calibration file of `match`)."""
    from .evaluation.report import to_json
    from .formats import write_json

    data = to_json(result)
    if path is not None:
        write_json(path, data)
    return data


# ---------------------------------------------------------------------------- training
def precompute(model: Model | PathLike, side: str, images: PathLike, out: PathLike, *, workers: int = 2,
               progress: bool = True) -> Path:
    """The frozen side's feature table of a folder (`isc-qk precompute`); returns its prefix."""
    from .qk.precompute import precompute as _precompute

    _precompute(os.fspath(model), side, images, out, workers=workers, progress=progress)
    return Path(out)


def run_phase(model: Model | PathLike, side: str, *, train_images: PathLike, augmented: PathLike, out: PathLike,
              tables: PathLike | None = None, tensorboard: PathLike | None = None, progress: bool = True,
              **train_options: Any) -> "TrainReport":
    """One QK Iteration phase from `model` into `out`, as the pipeline runs it: side "q"
    (train-q: keys = the K table of `train_images`) or "k" (train-k: queries = the Q table of
    the `augmented` folder); the frozen side's table is precomputed first into `tables`
    (default: OUT/../tables). Options: `configs.TrainConfig` fields (epochs, steps, batch_size,
    lr, warmup...) and the loss's (tau, m, w_pos, w_neg). Resumable; returns the train report."""
    from .configs import LossConfig, TrainConfig
    from .qk.precompute import phase_table
    from .qk.train import train

    if side not in ("q", "k"):
        raise UserError(f"side must be q or k, not {side!r}")
    loss = {k: train_options.pop(k) for k in ("tau", "m", "w_pos", "w_neg") if k in train_options}
    cfg = TrainConfig(side=side, loss=LossConfig(**loss), **train_options)
    m = model if isinstance(model, Model) else load_model(model)
    tables = Path(tables) if tables is not None else Path(out).parent / "tables"
    frozen_side, images = ("k", Path(train_images)) if side == "q" else ("q", Path(augmented))
    prefix = phase_table(m.path, frozen_side, images, tables)
    precompute(m, frozen_side, images, prefix, workers=cfg.workers, progress=progress)
    keys, queries = (prefix, augmented) if side == "q" else (train_images, prefix)
    return train(m.path, keys, queries, out, cfg, progress=progress, feature_cache=tables, tensorboard=tensorboard)


# ---------------------------------------------------------------------------- using it
def match(reference: Descriptors | PathLike, *, query: Descriptors | PathLike | None = None,
          images: PathLike | None = None, model: Model | PathLike | None = None, pca: PathLike | None = None,
          side: str = "q", threshold: float | None = None, calibration: PathLike | None = None,
          precision: float = DEFAULT_PRECISION, top_k: int = DEFAULT_TOP_K, out: PathLike | None = None,
          threads: int | None = None,
          workers: int = 2, progress: bool = True) -> "pd.DataFrame":
    """`isc-qk match` as a DataFrame (query_id, reference_id, score, rank, decision): the top
    `top_k` references of every query plus every pair at or above the threshold (a number, or
    read from an evaluate-uap JSON `calibration` at `precision`). `df.attrs` holds the
    threshold and where it came from. `out`: also keep the CSV (and its JSON) there."""
    import pandas as pd

    from .formats.atomic import read_json
    from .formats.matches import matches_sidecar
    from .matching.stage import match as _match

    with tempfile.TemporaryDirectory(prefix="isc-qk-") as tmp:
        tmp = Path(tmp)

        def as_file(x, name):
            if isinstance(x, Descriptors):
                write_descriptors(tmp / name, x)
                return tmp / name
            return x

        target = Path(out) if out is not None else tmp / "matches.csv"
        _match(as_file(reference, "references.h5"), target, query=None if query is None else as_file(query, "queries.h5"),
               images=images, model=None if model is None else os.fspath(model), pca=pca, side=side,
               threshold=threshold, calibration=calibration, precision=precision, top_k=top_k,
               descriptors=None if images is None or out is not None else tmp / "new.h5", threads=threads,
               workers=workers, progress=progress)
        frame = pd.read_csv(target, keep_default_na=False, dtype={"query_id": str, "reference_id": str})
        meta = read_json(matches_sidecar(target))
    frame.attrs.update(threshold=meta["threshold"], threshold_source=meta["threshold_source"])
    return frame


def inspect(ground_truth: PathLike, query: PathLike, reference: PathLike, query_images: PathLike,
            reference_images: PathLike, out: PathLike, **options: Any) -> Path:
    """The HTML error gallery (`isc-qk inspect`); options as the command's (manifest, name,
    compare_query, compare_reference, compare_name, show, ...). Returns OUT/index.html."""
    from .inspection.stage import inspect_results

    return Path(inspect_results(ground_truth, query, reference, query_images, reference_images, out,
                                **options).index)
