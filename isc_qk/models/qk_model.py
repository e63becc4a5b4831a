"""The Q and K descriptor models of QK Iteration, and the model folder that holds them.

Both sides have the same architecture with separate weights (queries are edited copies,
keys are originals: different distributions, so the paper trains two models):

    image -> backbone -> pooled features --+
    image -> start descriptor -> PCA ------+-> concat -> FFN head -> 256-d
    descriptor = residual_scale * FFN(concat) + start

The start is a frozen descriptor's PCA-256 fitted on training images (`starts`): GIST-PCA256 as
in the paper, or SSCD's. An untrained model reproduces that baseline, so training starts from
a useful descriptor instead of noise. The backbone is a trainable Keras model (EfficientNet-
Lite, B3, your own ``keras:PATH``) or a frozen ONNX model (``sscd``, ``onnx:PATH``), whose
side is then never trained and only precomputed.

A model folder holds everything `describe` needs besides the images: ``config.json``
(ModelConfig + backbone spec), ``{q,k}_head.weights.h5``, ``{q,k}_backbone.weights.h5`` (Keras
backbones), ``backbone.keras`` (a ``keras:PATH`` backbone's architecture) and the start PCA
(``gist_pca.npz`` / ``sscd_pca.npz``...), so descriptors can be computed from images alone.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..configs import ModelConfig, from_dict, to_dict
from ..errors import UserError
from ..formats.atomic import ROOM_MARGIN, atomic_path, ensure_room, read_json, save_keras_weights, write_json
from ..formats.pca import PCAModel, config_path
from ..stages import fingerprint
from ..starts.registry import StartDescriptor
from .backbones import KERAS_FILE, BackboneSpec, backbone_spec, build_backbone, keras_file
from .heads import build_head

if TYPE_CHECKING:  # heavy modules only for type hints
    import keras
    import tensorflow as tf

CONFIG_FILE = "config.json"
CONFIG_KIND = "qk-model"
SIDES = ("q", "k")


def pca_file_name(residual: str) -> str:
    """``gist_pca.npz``, ``sscd_pca.npz``...: the start PCA inside a model folder."""
    return f"{StartDescriptor(residual).slug}_pca.npz"


def weights_files(model_dir: str | os.PathLike, frozen_backbone: bool = False) -> dict[str, Path]:
    """The weight files of a model folder, keyed "q_backbone", "q_head", ... (no backbone
    files for a frozen ONNX backbone)."""
    d = Path(model_dir)
    parts = ("head",) if frozen_backbone else ("backbone", "head")
    return {f"{s}_{part}": d / f"{s}_{part}.weights.h5" for s in SIDES for part in parts}


class QKModel:
    """Q and K backbones and heads, the config, and the start PCA they were trained with."""

    def __init__(self, cfg: ModelConfig, spec: BackboneSpec, pca: PCAModel, q_backbone, k_backbone,
                 q_head: "keras.Model", k_head: "keras.Model") -> None:
        self.cfg, self.spec, self.pca = cfg, spec, pca
        self.start = StartDescriptor(cfg.residual)
        self.q_backbone, self.k_backbone = q_backbone, k_backbone
        self.q_head, self.k_head = q_head, k_head

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, cfg: ModelConfig, pca: PCAModel) -> "QKModel":
        """Fresh model: pretrained backbones (same start on both sides), seeded heads."""
        cfg.validate()
        _check_pca(pca, cfg, "the start PCA")
        spec = backbone_spec(cfg.backbone)
        q_bb = build_backbone(cfg.backbone, cfg.backbone_weights)
        k_bb = build_backbone(cfg.backbone, cfg.backbone_weights)
        q_head = build_head(spec.feature_dim, cfg, seed=cfg.seed)
        k_head = build_head(spec.feature_dim, cfg, seed=cfg.seed + 1)
        return cls(cfg, spec, pca, q_bb, k_bb, q_head, k_head)

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> "QKModel":
        """Load a model folder written by `save`; UserError if a file is missing or corrupt."""
        d = Path(model_dir)
        if not d.is_dir():
            raise UserError(f"{d}: model folder not found")
        if not (d / CONFIG_FILE).is_file():
            raise UserError(f"{d}: not a complete model folder (missing {CONFIG_FILE})")
        meta = read_json(d / CONFIG_FILE)
        if meta.get("kind") != CONFIG_KIND:
            raise UserError(f"{d / CONFIG_FILE}: not a QK model config (kind {meta.get('kind')!r})")
        cfg = from_dict(ModelConfig, meta.get("config"), str(d / CONFIG_FILE))
        try:
            spec = backbone_spec(cfg.backbone, d)
            cfg.validate(d)
        except UserError as e:
            raise UserError(f"{d / CONFIG_FILE}: {e}") from None
        missing = [p.name for p in model_files(d, cfg, spec) if not p.is_file()]
        if missing:
            raise UserError(f"{d}: not a complete model folder (missing {', '.join(missing)})")
        pca_path = d / pca_file_name(cfg.residual)
        try:
            pca = PCAModel.load(pca_path)
        except UserError as e:
            what = "GIST" if cfg.residual == "gist" else cfg.residual
            raise UserError(f"{pca_path}: cannot read the {what} PCA ({str(e).split(': ', 1)[-1]})") from None
        _check_pca(pca, cfg, str(pca_path))
        # weights=None: the saved files hold the trained weights; no need to fetch ImageNet ones
        models = {}
        for s in SIDES:
            models[f"{s}_backbone"] = build_backbone(cfg.backbone, None, folder=d)
            models[f"{s}_head"] = build_head(spec.feature_dim, cfg)
        for key, path in weights_files(d, spec.frozen).items():
            try:
                models[key].load_weights(str(path))
            except Exception as e:  # corrupt/truncated/mismatched h5: Keras raises many types
                raise UserError(f"{path}: cannot load weights ({type(e).__name__}: {str(e)[:120]})") from None
        return cls(cfg, spec, pca, **models)

    def save(self, model_dir: str | os.PathLike) -> None:
        """Write the model folder, each file atomically (temp name + os.replace); if the save fails
        (a full disk...), the files it had created are removed again: no half model is left."""
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        files = model_files(d, self.cfg, self.spec) + [config_path(d / pca_file_name(self.cfg.residual))]
        new = [p for p in files if not p.exists()]
        weights = [w for part in (self.q_backbone, self.k_backbone, self.q_head, self.k_head)
                   for w in getattr(part, "weights", [])]
        ensure_room(d / CONFIG_FILE, sum(int(np.prod(w.shape)) * 4 for w in weights) + 4 * ROOM_MARGIN)
        try:
            self._save_files(d)
        except BaseException:
            for p in new:
                p.unlink(missing_ok=True)
            raise

    def _save_files(self, d: Path) -> None:
        if self.cfg.backbone.startswith("keras:") and not (d / KERAS_FILE).is_file():
            with atomic_path(d / KERAS_FILE) as tmp:  # the architecture travels with the weights
                shutil.copyfile(keras_file(self.cfg.backbone), tmp)
        for key, path in weights_files(d, self.spec.frozen).items():
            side, part = key.split("_")
            save_keras_weights(self.backbone(side) if part == "backbone" else self.head(side), path)
        self.pca.save(d / pca_file_name(self.cfg.residual))
        write_json(d / CONFIG_FILE, {"kind": CONFIG_KIND, "isc_qk_version": __version__,
                                     "config": {**to_dict(self.cfg), "spec": dataclasses.asdict(self.spec)}})

    # ------------------------------------------------------------------ forward passes
    def backbone(self, side: str):
        return {"q": self.q_backbone, "k": self.k_backbone}[_side(side)]

    def head(self, side: str) -> "keras.Model":
        return {"q": self.q_head, "k": self.k_head}[_side(side)]

    @property
    def onnx(self) -> bool:
        """True when the backbone is an ONNX model: its features are computed outside TensorFlow."""
        return self.spec.frozen

    @property
    def frozen(self) -> bool:
        """True when the backbone is never trained (an ONNX model, or `freeze_backbone`): each
        side's features are then precomputed once per image and only the heads train."""
        return self.spec.frozen or self.cfg.freeze_backbone

    def features(self, side: str, images, start) -> "tf.Tensor":
        """concat(backbone(images), start) as float32 (B, feature_dim + dim): the head input.

        `images`: (B, S, S, 3) pixels for a Keras backbone, or the (B, feature_dim) features a
        frozen backbone already gave. The Keras backbone runs with training=False: BN is frozen
        anyway, and stochastic depth / dropout would make the Q and K features of the same
        image disagree from step to step.
        """
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        start = tf.convert_to_tensor(start, tf.float32)
        if start.shape.rank != 2 or start.shape[-1] != self.cfg.dim:
            raise UserError(f"{self.start.slug}256 must be (B, {self.cfg.dim}), got {tuple(start.shape)}")
        if images.shape[0] != start.shape[0]:
            raise UserError(f"{images.shape[0]} images but {start.shape[0]} start vectors")
        if self.onnx:
            if images.shape.rank != 2 or images.shape[-1] != self.spec.feature_dim:
                raise UserError(f"backbone features must be (B, {self.spec.feature_dim}), got {tuple(images.shape)}")
            return tf.concat([images, start], axis=1)
        if images.shape.rank != 4 or images.shape[-1] != 3:
            raise UserError(f"images must be (B, H, W, 3), got {tuple(images.shape)}")
        feats = tf.cast(self.backbone(side)(images, training=False), tf.float32)
        return tf.concat([feats, start], axis=1)

    def describe(self, side: str, images, start) -> "tf.Tensor":
        """(B, dim) descriptors: head(features(...))."""
        return self.head(side)(self.features(side, images, start), training=False)

    # ------------------------------------------------------------------ fingerprints
    def backbone_fingerprint(self, side: str) -> str:
        """One side's backbone and the start (descriptor + PCA): what a feature table depends on.

        Values, not files, for Keras weights: re-saving the same weights keeps the fingerprint;
        the file's bytes for a frozen ONNX model (then both sides share it)."""
        parts = [self.start.fingerprint(), fingerprint.of_arrays(self.pca.fingerprint_arrays())]
        if self.onnx:
            from .onnx_model import file_fingerprint

            return fingerprint.of_bytes(file_fingerprint(self.cfg.backbone), *parts)
        return fingerprint.of_bytes(fingerprint.of_arrays([w.numpy() for w in self.backbone(side).weights]), *parts)

    def side_fingerprint(self, side: str) -> str:
        """The backbone fingerprint and the head: what one side's descriptors depend on."""
        return fingerprint.of_bytes(self.backbone_fingerprint(side),
                                    fingerprint.of_arrays([w.numpy() for w in self.head(side).weights]))


def model_files(model_dir: str | os.PathLike, cfg: ModelConfig | None = None, spec: BackboneSpec | None = None) -> list[Path]:
    """The files a model folder consists of (config, start PCA, weights, backbone.keras)."""
    d = Path(model_dir)
    if cfg is None:
        if not (d / CONFIG_FILE).is_file():
            raise UserError(f"{d}: not a complete model folder (missing {CONFIG_FILE})")
        cfg = from_dict(ModelConfig, read_json(d / CONFIG_FILE).get("config"), str(d / CONFIG_FILE))
    frozen = spec.frozen if spec is not None else _frozen_name(cfg.backbone)
    files = [d / CONFIG_FILE, d / pca_file_name(cfg.residual), *weights_files(d, frozen).values()]
    return files + ([d / KERAS_FILE] if cfg.backbone.startswith("keras:") else [])


def _frozen_name(name: str) -> bool:
    from .onnx_model import is_onnx_name

    return is_onnx_name(name)


def files_fingerprint(model_dir: str | os.PathLike) -> str:
    """Bytes of a model folder's files: the starting point of a training run."""
    files = model_files(model_dir)
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise UserError(f"{model_dir}: not a complete model folder (missing {', '.join(missing)})")
    return fingerprint.of_files(files)


def _side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be 'q' or 'k', not {side!r}")
    return side


def _check_pca(pca: PCAModel, cfg: ModelConfig, where: str) -> None:
    comps = np.asarray(pca.components)
    if comps.ndim != 2 or comps.shape[0] != cfg.dim:
        raise UserError(f"{where}: the PCA has components of shape {comps.shape}, but the model needs {cfg.dim} dimensions")
    StartDescriptor(cfg.residual).check_pca(pca, where)
