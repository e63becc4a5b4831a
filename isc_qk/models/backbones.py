"""CNN backbones for the Q and K models: image -> globally pooled feature vector.

Why a registry: the Q and K models, the feature-table precompute and the saved model folder
all need to agree on a backbone's input size and feature width *before* building it (the
table's column count and the head's input width depend on it). `backbone_spec` answers
that without building anything; `build_backbone` builds the Keras model.

Every backbone takes float32 RGB pixel values in [0, 255] (it normalises internally) and
returns (B, feature_dim) features. All BatchNormalization layers are frozen
(``trainable = False``): the QK paper found that batch statistics leak information between
the rows of a batch (hard negatives are mined within the step), so BN always runs on its
moving statistics, even when the model is called with ``training=True``. For the same
reason (inference mode everywhere, as the paper runs it) dropout and stochastic depth are
switched off, so ``training=True`` and ``training=False`` give the same output: the Q and K
features of an image do not change between the mining pass and the gradient pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-b3", "tiny")
#: Besides these names: "keras:PATH" (your own trainable Keras model) and the frozen ONNX
#: models "sscd", "sscd-distilled" and "onnx:PATH" (`models.onnx_model`).
KERAS_FILE = "backbone.keras"  # a keras:PATH backbone's architecture, copied into the model folder

#: The tiny test backbone: small enough to train in a unit test, random but seeded.
TINY_INPUT_SIZE = 64
TINY_FEATURE_DIM = 64
TINY_SEED = 1234


@dataclass(frozen=True)
class BackboneSpec:
    """What callers must know about a backbone before building it."""

    name: str
    input_size: int  # side of the square RGB input of a Keras backbone (0: an ONNX model sizes its own)
    feature_dim: int
    frozen: bool = False  # ONNX models are never trained: their side is precomputed

    @property
    def kind(self) -> str:
        return "onnx" if self.frozen else "keras"


_SPECS = {
    "efficientnet-lite0": BackboneSpec("efficientnet-lite0", 224, 1280),
    "efficientnet-lite1": BackboneSpec("efficientnet-lite1", 240, 1280),
    "efficientnet-lite2": BackboneSpec("efficientnet-lite2", 260, 1280),
    "efficientnet-b3": BackboneSpec("efficientnet-b3", 300, 1536),
    "tiny": BackboneSpec("tiny", TINY_INPUT_SIZE, TINY_FEATURE_DIM),
}


def backbone_spec(name: str, folder: str | os.PathLike | None = None) -> BackboneSpec:
    """Input size and feature width of backbone `name`; UserError for an unknown name.

    `folder`: a model folder; a keras:PATH backbone is then read from its copy there.
    """
    from .onnx_model import embedder, is_onnx_name

    if name in _SPECS:
        return _SPECS[name]
    if is_onnx_name(name):
        return BackboneSpec(name, 0, embedder(name).dim, frozen=True)
    if name.startswith("keras:"):
        path = Path(folder) / KERAS_FILE if folder is not None and (Path(folder) / KERAS_FILE).is_file() else keras_file(name)
        st = path.stat()
        return _keras_file_spec(name, str(path), st.st_size, st.st_mtime_ns)
    raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}, keras:PATH, "
                    "sscd, sscd-distilled, onnx:PATH") from None


def keras_file(name: str) -> Path:
    path = Path(name[len("keras:"):]).expanduser()
    if not path.is_file():
        raise UserError(f"{name}: Keras model file not found")
    return path.resolve()


def _load_keras_file(path: Path):
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as e:  # Keras raises many types for foreign or damaged files
        raise UserError(f"{path}: not a Keras model file ({type(e).__name__}: {str(e)[:160]})") from None


@lru_cache(maxsize=8)
def _keras_file_spec(name: str, path: str, size: int, mtime: int) -> BackboneSpec:
    """A user's Keras model: RGB float32 in [0, 255] of a fixed square size -> (B, D) features."""
    model = _load_keras_file(Path(path))
    shape_in, shape_out = tuple(model.input_shape), tuple(model.output_shape)
    if len(shape_in) != 4 or shape_in[3] != 3 or shape_in[1] is None or shape_in[1] != shape_in[2]:
        raise UserError(f"{path}: a backbone takes square RGB images of a fixed size, (B, S, S, 3); "
                        f"this model takes {shape_in}")
    if len(shape_out) != 2 or shape_out[1] is None:
        raise UserError(f"{path}: a backbone outputs pooled features (B, D); this model outputs {shape_out} "
                        "(add a global pooling layer)")
    return BackboneSpec(name, int(shape_in[1]), int(shape_out[1]))


def build_backbone(name: str, weights: str | None = "imagenet", folder: str | os.PathLike | None = None):
    """Build backbone `name` with all BatchNorm layers frozen (an `OnnxEmbedder` for ONNX ones).

    `folder`: a model folder holding the copied ``backbone.keras`` of a keras:PATH backbone.

    `weights`: "imagenet" (pretrained; for "tiny" this means its fixed-seed random init),
    None (random init), or a path to a weights file for that architecture.
    """
    spec = backbone_spec(name, folder)
    if spec.frozen:
        from .onnx_model import embedder

        return embedder(name)
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise UserError(f"backbone weights file not found: {weights}")
    if name.startswith("keras:"):  # the file's own weights ("imagenet" here means: as trained by you)
        path = Path(folder) / KERAS_FILE if folder is not None and (Path(folder) / KERAS_FILE).is_file() else keras_file(name)
        model = _load_keras_file(path)
        if weights not in (None, "imagenet"):
            _load_weights(model, weights)
    elif name == "tiny":
        model = _build_tiny()
        if weights not in (None, "imagenet"):
            _load_weights(model, weights)
    elif name.startswith("efficientnet-lite"):
        from .efficientnet_lite import build_efficientnet_lite

        variant = name.removeprefix("efficientnet-")
        model = build_efficientnet_lite(variant, include_top=False, pooling="avg", weights=weights)
    else:  # efficientnet-b3
        model = _build_b3(weights)
    freeze_batchnorm(model)
    disable_dropout(model)
    shape = tuple(model.output.shape)
    if shape[-1] != spec.feature_dim:  # a bug, not a user error: the spec table is wrong
        raise AssertionError(f"{name}: output {shape}, spec says {spec.feature_dim}")
    return model


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


def _build_tiny():
    """A 4-layer CNN, 64 px in, 64 features out; fixed seed so tests are reproducible."""
    import keras
    from keras import layers

    init = lambda i: keras.initializers.HeNormal(seed=TINY_SEED + i)  # noqa: E731
    inp = keras.Input((TINY_INPUT_SIZE, TINY_INPUT_SIZE, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inp)
    for i, ch in enumerate((16, 32, 64)):
        x = layers.Conv2D(ch, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init(i), name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inp, x, name="tiny_backbone")


def _keras_cache_file(fname: str) -> Path:
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return base / "models" / fname


def _build_b3(weights: str | None):
    """Keras EfficientNetB3 (it rescales and normalises [0, 255] input itself)."""
    import keras

    if weights == "imagenet":
        # Keras downloads the weights on first use; offline that fails with a long network
        # traceback, so check the cache and try once, then explain the alternative.
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
