"""The Q and K descriptor models of QK Iteration, and the model folder that holds them.

Both sides have the same architecture with separate weights (queries are edited copies,
keys are originals: different distributions, so the paper trains two models). A side is
(encoder, start, head):

    image -> encoder (the backbone) -> pooled features --+
    image -> start: frozen encoder -> PCA -----------------+-> concat -> head -> dim
    descriptor = residual_scale * FFN(concat) + start     (`heads`)

The start (`starts.Start`) is a frozen encoder's PCA fitted on training images: GIST-PCA256 as
in the paper, or SSCD's. An untrained model reproduces that baseline, so training starts from
a useful descriptor instead of noise. The backbone is any encoder (`encoders`): a trainable
Keras model (EfficientNet-Lite, B3, your own ``keras:PATH``), or a frozen one (an ONNX model
such as SSCD, or a Keras backbone with ``freeze_backbone``), whose features are then computed
once per image and only the heads train.

A model folder holds everything `describe` needs besides the images: ``config.json``
(ModelConfig + the encoder's spec), ``{q,k}_head.weights.h5``, ``{q,k}_backbone.weights.h5``
(Keras backbones), the encoder's own files (``backbone.keras`` of a ``keras:PATH`` backbone) and
the start PCA (``gist_pca.npz`` / ``sscd_pca.npz``...), so descriptors can be computed from
images alone.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..configs import ModelConfig, from_dict, to_dict
from ..encoders import Encoder, create, is_trainable, parse
from ..encoders.registry import encoder_class
from ..errors import UserError
from ..formats.atomic import ROOM_MARGIN, ensure_room, read_json, save_keras_weights, write_json
from ..formats.pca import PCAModel, config_path
from ..stages import fingerprint
from ..stages.resources import check_memory
from ..starts.start import Start, pca_file_name
from .heads import build_head

if TYPE_CHECKING:  # heavy modules only for type hints
    import keras
    import tensorflow as tf

CONFIG_FILE = "config.json"
CONFIG_KIND = "qk-model"
SIDES = ("q", "k")


def check_model_config(cfg: ModelConfig) -> None:
    """Settings and names, without loading anything: the config's own ranges, a known backbone,
    a known start that can be a start (a frozen encoder)."""
    cfg.validate()
    parse(cfg.backbone, "backbone")
    parse(cfg.residual, "residual start")
    if is_trainable(cfg.residual):
        raise UserError(f"--residual {cfg.residual}: a trainable backbone cannot be a residual start; choose a frozen "
                        "descriptor (gist, sscd, sscd-distilled, onnx:PATH)")


def frozen_backbone(cfg: ModelConfig) -> bool:
    """Whether a model of these settings never trains its backbone (a frozen encoder, or
    `freeze_backbone`): what `QKModel.frozen` will say, known without loading the model."""
    return cfg.freeze_backbone or not is_trainable(cfg.backbone)


def weights_files(model_dir: str | os.PathLike, backbone_weights: bool = True) -> dict[str, Path]:
    """The weight files of a model folder, keyed "q_backbone", "q_head", ... (backbone files only
    for encoders with weights: Keras backbones)."""
    d = Path(model_dir)
    parts = ("backbone", "head") if backbone_weights else ("head",)
    return {f"{s}_{part}": d / f"{s}_{part}.weights.h5" for s in SIDES for part in parts}


@dataclass
class QKSide:
    """One side: its backbone encoder, the (shared) start, its head."""

    name: str  # "q" or "k"
    encoder: Encoder
    start: Start
    head: "keras.Model"


class QKModel:
    """Q and K sides, the config, and the start they were trained with."""

    def __init__(self, cfg: ModelConfig, q: QKSide, k: QKSide) -> None:
        self.cfg, self.q, self.k = cfg, q, k

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, cfg: ModelConfig, pca: PCAModel, where: str = "the start PCA") -> "QKModel":
        """Fresh model: pretrained backbones (same start on both sides), seeded heads; `where`
        names the PCA in messages."""
        check_model_config(cfg)
        start = _start(cfg, pca, where)
        sides = []
        for i, s in enumerate(SIDES):
            enc = create(cfg.backbone, trainable=not cfg.freeze_backbone, weights=cfg.backbone_weights)
            if i == 0:
                check_memory(cfg.head_bytes(enc.spec.dim), f"--head-hidden {cfg.head_hidden} (two heads, with "
                             "gradients and Adam's slots)", "use a smaller --head-hidden")
            sides.append(QKSide(s, enc, start, build_head(enc.spec.dim, cfg, seed=cfg.seed + i)))
        return cls(cfg, *sides)

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> "QKModel":
        """Load a model folder written by `save`; UserError if a file is missing or corrupt."""
        d = Path(model_dir)
        if not d.is_dir():
            raise UserError(f"{d}: model folder not found")
        cfg = read_config(d)
        try:
            check_model_config(cfg)
        except UserError as e:
            raise UserError(f"{d / CONFIG_FILE}: {e}") from None
        missing = [p.name for p in model_files(d, cfg) if not p.is_file()]
        if missing:
            raise UserError(f"{d}: not a complete model folder (missing {', '.join(missing)})")
        pca_path = d / pca_file_name(cfg.residual)
        try:
            pca = PCAModel.load(pca_path)
        except UserError as e:
            what = parse(cfg.residual).short_label
            raise UserError(f"{pca_path}: cannot read the {what} PCA ({str(e).split(': ', 1)[-1]})") from None
        start = _start(cfg, pca, str(pca_path))
        # weights=None: the saved files hold the trained weights; no need to fetch ImageNet ones
        sides = {}
        for s in SIDES:
            enc = create(cfg.backbone, trainable=not cfg.freeze_backbone, weights=None, folder=d)
            sides[s] = QKSide(s, enc, start, build_head(enc.spec.dim, cfg))
        model = cls(cfg, sides["q"], sides["k"])
        for key, path in weights_files(d, model.q.encoder.model is not None).items():
            side, part = key.split("_")
            target = model.side(side).encoder.model if part == "backbone" else model.head(side)
            try:
                target.load_weights(str(path))
            except Exception as e:  # corrupt/truncated/mismatched h5: Keras raises many types
                raise UserError(f"{path}: cannot load weights ({type(e).__name__}: {str(e)[:120]})") from None
        return model

    def save(self, model_dir: str | os.PathLike) -> None:
        """Write the model folder, each file atomically (temp name + os.replace); if the save fails
        (a full disk...), the files it had created are removed again: no half model is left."""
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        files = model_files(d, self.cfg) + [config_path(d / pca_file_name(self.cfg.residual))]
        new = [p for p in files if not p.exists()]
        weights = [w for s in SIDES for part in (self.backbone(s), self.head(s)) if part is not None for w in part.weights]
        ensure_room(d / CONFIG_FILE, sum(int(np.prod(w.shape)) * 4 for w in weights) + 4 * ROOM_MARGIN)
        try:
            self._save_files(d)
        except BaseException:  # a failed save removes what it wrote
            for p in new:
                p.unlink(missing_ok=True)
            raise

    def _save_files(self, d: Path) -> None:
        self.q.encoder.install(d)
        for key, path in weights_files(d, self.q.encoder.model is not None).items():
            side, part = key.split("_")
            save_keras_weights(self.side(side).encoder.model if part == "backbone" else self.head(side), path)
        self.start.pca.save(d / pca_file_name(self.cfg.residual))
        spec = {"encoder": self.q.encoder.id, **dataclasses.asdict(self.spec)}
        write_json(d / CONFIG_FILE, {"kind": CONFIG_KIND, "isc_qk_version": __version__,
                                     "config": {**to_dict(self.cfg), "spec": spec}})

    # ------------------------------------------------------------------ parts
    def side(self, side: str) -> QKSide:
        return {"q": self.q, "k": self.k}[_side(side)]

    def head(self, side: str) -> "keras.Model":
        return self.side(side).head

    def backbone(self, side: str) -> "keras.Model | None":
        """The Keras model of a side's backbone (None for encoders without weights)."""
        return self.side(side).encoder.model

    @property
    def start(self) -> Start:
        return self.q.start

    @property
    def pca(self) -> PCAModel:
        return self.start.pca

    @property
    def spec(self):
        """The backbone encoder's spec (both sides have the same architecture)."""
        return self.q.encoder.spec

    @property
    def frozen(self) -> bool:
        """True when the backbone never trains: each side's features are then precomputed once
        per image and only the heads train."""
        return not self.spec.trainable

    # ------------------------------------------------------------------ forward passes
    def features(self, side: str, images, start) -> "tf.Tensor":
        """concat(backbone(images), start) as float32 (B, feature_dim + dim): the head input.

        `images`: (B, S, S, 3) pixels for a trainable backbone, or the (B, feature_dim) features a
        frozen backbone already gave. The Keras backbone runs with training=False: BN is frozen
        anyway, and stochastic depth / dropout would make the Q and K features of the same
        image disagree from step to step.
        """
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        start = tf.convert_to_tensor(start, tf.float32)
        if start.shape.rank != 2 or start.shape[-1] != self.cfg.dim:
            raise UserError(f"start vectors must be (B, {self.cfg.dim}), got {tuple(start.shape)}")
        if images.shape[0] != start.shape[0]:
            raise UserError(f"{images.shape[0]} images but {start.shape[0]} start vectors")
        if self.frozen:
            if images.shape.rank != 2 or images.shape[-1] != self.spec.dim:
                raise UserError(f"backbone features must be (B, {self.spec.dim}), got {tuple(images.shape)}")
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
        """One side's backbone and the start (encoder + PCA): what a feature table depends on.
        For a frozen encoder both sides share it."""
        return fingerprint.of_bytes(self.side(side).encoder.fingerprint(), *self.start.fingerprint_parts())

    def side_fingerprint(self, side: str) -> str:
        """The backbone fingerprint and the head: what one side's descriptors depend on."""
        return fingerprint.of_bytes(self.backbone_fingerprint(side),
                                    fingerprint.of_arrays([w.numpy() for w in self.head(side).weights]))


def read_config(model_dir: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a model folder (UserError if there is none or it is not one)."""
    d = Path(model_dir)
    if not (d / CONFIG_FILE).is_file():
        raise UserError(f"{d}: not a complete model folder (missing {CONFIG_FILE})")
    meta = read_json(d / CONFIG_FILE)
    if meta.get("kind") != CONFIG_KIND:
        raise UserError(f"{d / CONFIG_FILE}: not a QK model config (kind {meta.get('kind')!r})")
    return from_dict(ModelConfig, meta.get("config"), str(d / CONFIG_FILE))


def model_files(model_dir: str | os.PathLike, cfg: ModelConfig | None = None) -> list[Path]:
    """The files a model folder consists of (config, start PCA, weights, the encoder's own)."""
    d = Path(model_dir)
    cfg = cfg or read_config(d)
    files = [d / CONFIG_FILE, d / pca_file_name(cfg.residual), *weights_files(d, is_trainable(cfg.backbone)).values()]
    return files + encoder_class(cfg.backbone).folder_files(d)


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


def _start(cfg: ModelConfig, pca: PCAModel, where: str) -> Start:
    comps = np.asarray(pca.components)
    if comps.ndim != 2 or comps.shape[0] != cfg.dim:
        raise UserError(f"{where}: the PCA has components of shape {comps.shape}, but the model needs {cfg.dim} dimensions")
    return Start(create(cfg.residual, trainable=False), pca, where)
