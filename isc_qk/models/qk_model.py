"""The Q and K descriptor models of QK Iteration, and the model folder that holds them.

Both sides have the same architecture with separate weights (queries are edited copies,
keys are originals: different distributions, so the paper trains two models):

    image -> backbone -> global pooling -> concat(features, gist256) -> FFN head -> 256-d
    descriptor = residual_scale * FFN(concat) + gist256

The residual start (scale 0.01, paper fig. 5) makes an untrained model reproduce the
GIST-PCA baseline, so training starts from a useful descriptor instead of noise.

A model folder holds everything `describe` needs besides the images: ``config.json``
(ModelConfig + backbone spec), ``{q,k}_{backbone,head}.weights.h5`` and the GIST PCA
(``gist_pca.npz``), so descriptors can be computed from images alone.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..configs import ModelConfig, from_dict, to_dict
from ..errors import UserError
from ..formats.atomic import read_json, save_keras_weights, write_json
from ..formats.pca import PCAModel
from ..stages import fingerprint
from .backbones import BackboneSpec, backbone_spec, build_backbone
from .heads import build_head

if TYPE_CHECKING:  # heavy modules only for type hints
    import keras
    import tensorflow as tf

CONFIG_FILE = "config.json"
PCA_FILE = "gist_pca.npz"
CONFIG_KIND = "qk-model"
SIDES = ("q", "k")


def weights_files(model_dir: str | os.PathLike) -> dict[str, Path]:
    """The four weight files of a model folder, keyed "q_backbone", "q_head", ..."""
    d = Path(model_dir)
    return {f"{s}_{part}": d / f"{s}_{part}.weights.h5" for s in SIDES for part in ("backbone", "head")}


class QKModel:
    """Q and K backbones and heads, the config, and the GIST PCA they were trained with."""

    def __init__(
        self,
        cfg: ModelConfig,
        spec: BackboneSpec,
        pca: "PCAModel",
        q_backbone: "keras.Model",
        k_backbone: "keras.Model",
        q_head: "keras.Model",
        k_head: "keras.Model",
    ) -> None:
        self.cfg, self.spec, self.pca = cfg, spec, pca
        self.q_backbone, self.k_backbone = q_backbone, k_backbone
        self.q_head, self.k_head = q_head, k_head

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, cfg: ModelConfig, pca: "PCAModel") -> "QKModel":
        """Fresh model: pretrained backbones (same start on both sides), seeded heads."""
        cfg.validate()
        _check_pca(pca, cfg.dim)
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
        missing = [p.name for p in [d / CONFIG_FILE, d / PCA_FILE, *weights_files(d).values()] if not p.is_file()]
        if missing:
            raise UserError(f"{d}: not a complete model folder (missing {', '.join(missing)})")
        meta = read_json(d / CONFIG_FILE)
        if meta.get("kind") != CONFIG_KIND:
            raise UserError(f"{d / CONFIG_FILE}: not a QK model config (kind {meta.get('kind')!r})")
        cfg = from_dict(ModelConfig, meta.get("config", {}))
        cfg.validate()
        spec = backbone_spec(cfg.backbone)
        try:
            pca = PCAModel.load(d / PCA_FILE)
        except UserError as e:
            raise UserError(f"{d / PCA_FILE}: cannot read the GIST PCA ({str(e).split(': ', 1)[-1]})") from None
        _check_pca(pca, cfg.dim)
        # weights=None: the saved files hold the trained weights; no need to fetch ImageNet ones
        models = {}
        for s in SIDES:
            models[f"{s}_backbone"] = build_backbone(cfg.backbone, None)
            models[f"{s}_head"] = build_head(spec.feature_dim, cfg)
        for key, path in weights_files(d).items():
            try:
                models[key].load_weights(str(path))
            except Exception as e:  # corrupt/truncated/mismatched h5: Keras raises many types
                raise UserError(f"{path}: cannot load weights ({type(e).__name__}: {str(e)[:120]})") from None
        return cls(cfg, spec, pca, **models)

    def save(self, model_dir: str | os.PathLike) -> None:
        """Write the model folder, each file atomically (temp name + os.replace)."""
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        for key, path in weights_files(d).items():
            side, part = key.split("_")
            model = self.backbone(side) if part == "backbone" else self.head(side)
            save_keras_weights(model, path)
        self.pca.save(d / PCA_FILE)
        write_json(d / CONFIG_FILE, {"kind": CONFIG_KIND, "isc_qk_version": __version__,
                                     "config": {**to_dict(self.cfg), "spec": dataclasses.asdict(self.spec)}})

    # ------------------------------------------------------------------ forward passes
    def backbone(self, side: str) -> "keras.Model":
        return {"q": self.q_backbone, "k": self.k_backbone}[_side(side)]

    def head(self, side: str) -> "keras.Model":
        return {"q": self.q_head, "k": self.k_head}[_side(side)]

    def features(self, side: str, images, gist256) -> "tf.Tensor":
        """concat(backbone(images), gist256) as float32 (B, feature_dim + dim): the head input.

        The backbone runs with training=False: BN is frozen anyway, and stochastic depth /
        dropout would make the Q and K features of the same image disagree from step to step.
        """
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        gist256 = tf.convert_to_tensor(gist256, tf.float32)
        if gist256.shape.rank != 2 or gist256.shape[-1] != self.cfg.dim:
            raise UserError(f"gist256 must be (B, {self.cfg.dim}), got {tuple(gist256.shape)}")
        if images.shape.rank != 4 or images.shape[-1] != 3:
            raise UserError(f"images must be (B, H, W, 3), got {tuple(images.shape)}")
        if images.shape[0] != gist256.shape[0]:
            raise UserError(f"{images.shape[0]} images but {gist256.shape[0]} GIST vectors")
        feats = tf.cast(self.backbone(side)(images, training=False), tf.float32)
        return tf.concat([feats, gist256], axis=1)

    def describe(self, side: str, images, gist256) -> "tf.Tensor":
        """(B, dim) descriptors: head(features(...))."""
        return self.head(side)(self.features(side, images, gist256), training=False)

    # ------------------------------------------------------------------ fingerprints
    def backbone_fingerprint(self, side: str) -> str:
        """One side's backbone weights and the PCA: what a frozen-side feature table depends on.

        Values, not files: re-saving the same weights keeps the fingerprint."""
        return fingerprint.of_arrays([w.numpy() for w in self.backbone(side).weights] + list(self.pca.fingerprint_arrays()))

    def side_fingerprint(self, side: str) -> str:
        """The backbone fingerprint and the head: what one side's descriptors depend on."""
        return fingerprint.of_bytes(self.backbone_fingerprint(side),
                                    fingerprint.of_arrays([w.numpy() for w in self.head(side).weights]))


def model_files(model_dir: str | os.PathLike) -> list[Path]:
    """The files a model folder consists of (config, start PCA, the four weight files)."""
    d = Path(model_dir)
    return [d / CONFIG_FILE, d / PCA_FILE, *weights_files(d).values()]


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


def _check_pca(pca: "PCAModel", dim: int) -> None:
    comps = np.asarray(pca.components)
    if comps.ndim != 2 or comps.shape[0] != dim:
        raise UserError(f"GIST PCA has components of shape {comps.shape}, but the model needs {dim} dimensions")
