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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .backbones import BackboneSpec, backbone_spec, build_backbone
from .config import load_config, save_config
from .errors import UserError
from .io import read_json, save_keras_weights

if TYPE_CHECKING:  # heavy or not-yet-imported modules only for type hints
    import keras
    import tensorflow as tf

    from .gist_pca import PCAModel

CONFIG_FILE = "config.json"
PCA_FILE = "gist_pca.npz"
CONFIG_KIND = "qk-model"
SIDES = ("q", "k")


@dataclass
class ModelConfig:
    """Architecture settings, saved in the model folder's config.json."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = "imagenet"
    head_hidden: int = 1024
    dim: int = 256  # GIST-PCA dimension == descriptor dimension
    residual_scale: float = 0.01
    # False: the paper's head. True: the FFN's output layer starts at zero and a zero-initialised
    # linear shortcut runs beside it, so the model starts exactly at GIST and can first learn a
    # linear map of the backbone features: what a short CPU budget on a small training set needs
    # (measured in the README), and pair it with residual_scale 1.
    head_shortcut: bool = False
    seed: int = 0

    def validate(self) -> None:
        backbone_spec(self.backbone)
        if self.head_hidden < 1 or self.dim < 1:
            raise UserError(f"head_hidden and dim must be positive (got {self.head_hidden}, {self.dim})")


def weights_files(model_dir: str | os.PathLike) -> dict[str, Path]:
    """The four weight files of a model folder, keyed "q_backbone", "q_head", ..."""
    d = Path(model_dir)
    return {f"{s}_{part}": d / f"{s}_{part}.weights.h5" for s in SIDES for part in ("backbone", "head")}


def build_head(feature_dim: int, cfg: ModelConfig, seed: int | None = None) -> "keras.Model":
    """FFN head: (B, feature_dim + dim) -> (B, dim) = scale * FFN(x) + x[:, -dim:].

    The last `dim` input columns are the image's GIST-PCA vector, so the residual adds
    GIST back. Initialisation is seeded (`seed`, default cfg.seed) so runs are reproducible.
    """
    import keras
    from keras import layers

    seed = cfg.seed if seed is None else seed
    inp = keras.Input((feature_dim + cfg.dim,), name="features")
    h = layers.Dense(
        cfg.head_hidden,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="ffn_hidden",
    )(inp)
    out_init = "zeros" if cfg.head_shortcut else keras.initializers.GlorotUniform(seed=seed + 7919)
    f = layers.Dense(cfg.dim, kernel_initializer=out_init, name="ffn_out")(h)
    if cfg.head_shortcut:
        lin = layers.Dense(cfg.dim, kernel_initializer="zeros", name="linear_shortcut")(inp)
        f = layers.Add(name="ffn_plus_linear")([f, lin])
    gist = inp[:, feature_dim:]  # a graph op on the KerasTensor: no Lambda to deserialise
    out = layers.Add(name="residual")([layers.Rescaling(cfg.residual_scale, name="residual_scale")(f), gist])
    return keras.Model(inp, out, name="qk_head")


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
        from .gist_pca import PCAModel

        d = Path(model_dir)
        if not d.is_dir():
            raise UserError(f"{d}: model folder not found")
        missing = [p.name for p in [d / CONFIG_FILE, d / PCA_FILE, *weights_files(d).values()] if not p.is_file()]
        if missing:
            raise UserError(f"{d}: not a complete model folder (missing {', '.join(missing)})")
        meta = read_json(d / CONFIG_FILE)
        if meta.get("kind") != CONFIG_KIND:
            raise UserError(f"{d / CONFIG_FILE}: not a QK model config (kind {meta.get('kind')!r})")
        cfg = load_config(d / CONFIG_FILE, ModelConfig)
        cfg.validate()
        spec = backbone_spec(cfg.backbone)
        try:
            pca = PCAModel.load(d / PCA_FILE)
        except Exception as e:  # truncated/corrupt npz: zipfile, pickle and key errors
            raise UserError(f"{d / PCA_FILE}: cannot read the GIST PCA ({type(e).__name__}: {str(e)[:120]})") from None
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
        save_config(d / CONFIG_FILE, {**dataclasses.asdict(self.cfg), "spec": dataclasses.asdict(self.spec)}, CONFIG_KIND)

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


def _side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be 'q' or 'k', not {side!r}")
    return side


def _check_pca(pca: "PCAModel", dim: int) -> None:
    comps = np.asarray(pca.components)
    if comps.ndim != 2 or comps.shape[0] != dim:
        raise UserError(f"GIST PCA has components of shape {comps.shape}, but the model needs {dim} dimensions")
