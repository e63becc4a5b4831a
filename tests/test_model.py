"""Q/K model: the GIST residual head, separate Q and K weights, the model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isc_qk.errors import UserError
from isc_qk.configs import ModelConfig
from isc_qk.models.heads import build_head
from isc_qk.models.qk_model import QKModel, weights_files

DIM = 16


@pytest.fixture(scope="module")
def pca():
    """A real GIST-PCA fitted on real GIST vectors of small photo crops."""
    from isc_qk.gist.descriptor import gist_descriptors
    from isc_qk.vectors import fit_pca

    return fit_pca(gist_descriptors(_gist_images(40, seed=1)), dim=DIM)


def _gist_images(n: int, seed: int) -> np.ndarray:
    from skimage import data

    rng = np.random.default_rng(seed)
    photo = data.astronaut()
    out = []
    for _ in range(n):
        y, x = rng.integers(0, photo.shape[0] - 64, size=2)
        out.append(photo[y : y + 64 : 2, x : x + 64 : 2])
    return np.stack(out).astype(np.uint8)


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"backbone": "tiny", "head_hidden": 32, "dim": DIM, **kw})


def _batch(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(n, 64, 64, 3)).astype(np.float32)
    gist = rng.normal(scale=0.1, size=(n, DIM)).astype(np.float32)
    return images, gist


# ----------------------------------------------------------------------------- head
def test_head_is_scaled_ffn_plus_gist_residual():
    x = np.random.default_rng(0).normal(size=(5, 40 + DIM)).astype(np.float32)
    gist = x[:, -DIM:]
    h001 = build_head(40, _cfg(residual_scale=0.01), seed=3)
    h1 = build_head(40, _cfg(residual_scale=1.0), seed=3)
    h0 = build_head(40, _cfg(residual_scale=0.0), seed=3)
    np.testing.assert_array_equal(h0(x).numpy(), gist)
    ffn = h1(x).numpy() - gist
    assert np.abs(ffn).mean() > 1e-3  # the FFN is not trivially zero
    np.testing.assert_allclose((h001(x).numpy() - gist) / 0.01, ffn, rtol=1e-3, atol=1e-4)
    assert h001.output_shape == (None, DIM)
    assert [l.units for l in h001.layers if hasattr(l, "units")] == [32, DIM]


def test_head_shortcut_starts_exactly_at_gist_and_learns_a_linear_map():
    import tensorflow as tf

    cfg = ModelConfig(backbone="tiny", head_hidden=16, dim=8, residual_scale=1.0, head_shortcut=True)
    head = build_head(64, cfg)
    x = np.random.default_rng(0).normal(size=(5, 72)).astype(np.float32)
    np.testing.assert_array_equal(head(x).numpy(), x[:, -8:])  # zero-initialised: exactly GIST
    assert head.get_layer("linear_shortcut").kernel.shape == (72, 8)
    # one gradient step moves the descriptor through the shortcut (the FFN output starts at 0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(head(x) ** 2)
    grads = dict(zip([v.path for v in head.trainable_variables], tape.gradient(loss, head.trainable_variables)))
    lin = next(g for k, g in grads.items() if "linear_shortcut" in k and "kernel" in k)
    assert float(tf.reduce_max(tf.abs(lin))) > 0


def test_head_init_is_seeded():
    x = np.random.default_rng(1).normal(size=(3, 40 + DIM)).astype(np.float32)
    a, b, c = (build_head(40, _cfg(), seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    assert not np.array_equal(a(x).numpy(), c(x).numpy())


# ----------------------------------------------------------------------------- model
def test_create_starts_at_gist_and_has_separate_q_and_k(pca):
    model = QKModel.create(_cfg(), pca)
    assert model.spec.dim == 64 and model.spec.input_size == 64
    assert model.backbone("q") is not model.backbone("k") and model.head("q") is not model.head("k")
    images, gist = _batch()
    feats = model.features("q", images, gist).numpy()
    assert feats.shape == (4, 64 + DIM) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[:, -DIM:], gist)
    for side in ("q", "k"):
        d = model.describe(side, images, gist).numpy()
        assert d.shape == (4, DIM)
        # residual start: descriptor = gist + 0.01 * FFN, close to gist
        assert np.abs(d - gist).max() < 0.05 * np.abs(gist).max() + 0.05
        assert not np.array_equal(d, gist)
    # same backbone start, different head seeds
    np.testing.assert_array_equal(model.backbone("q")(images).numpy(), model.backbone("k")(images).numpy())
    assert not np.array_equal(model.describe("q", images, gist).numpy(), model.describe("k", images, gist).numpy())
    # weights are not shared: changing Q leaves K alone
    k_before = model.describe("k", images, gist).numpy()
    for v in model.head("q").trainable_variables + model.backbone("q").trainable_variables:
        v.assign(v * 1.5)
    np.testing.assert_array_equal(model.describe("k", images, gist).numpy(), k_before)


def test_describe_real_photos_matches_gist_pca_at_start(pca, image_folder):
    """Real images -> GIST-PCA with the real pipeline -> the untrained model stays near it."""
    from isc_qk.gist.descriptor import gist_descriptors, preprocess
    from isc_qk.formats.images import list_images, load_rgb

    folder, ids = image_folder(6)
    files = list_images(folder)
    gist256 = pca.transform(gist_descriptors(np.stack([preprocess(load_rgb(f.path)) for f in files])))
    model = QKModel.create(_cfg(), pca)
    images = np.stack([model.q.encoder.decode(load_rgb(f.path)).astype(np.float32) for f in files])
    d = model.describe("q", images, gist256).numpy()
    rel = np.linalg.norm(d - gist256, axis=1) / np.linalg.norm(gist256, axis=1)
    assert rel.max() < 0.1, rel


def test_gradients_reach_backbone_and_head(pca):
    import tensorflow as tf

    model = QKModel.create(_cfg(), pca)
    images, gist = _batch()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model.describe("q", images, gist)))
    variables = model.backbone("q").trainable_variables + model.head("q").trainable_variables
    grads = tape.gradient(loss, variables)
    assert all(g is not None for g in grads)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    # frozen BN: no BN parameters among the trainable ones
    assert not any("bn" in v.path for v in model.backbone("q").trainable_variables)


def test_input_shape_errors(pca):
    model = QKModel.create(_cfg(), pca)
    images, gist = _batch()
    with pytest.raises(UserError, match="start vectors must be"):
        model.features("q", images, gist[:, :8])
    with pytest.raises(UserError, match="images but"):
        model.features("q", images[:2], gist)
    with pytest.raises(ValueError, match="side"):
        model.head("x")


def test_pca_dimension_must_match(pca):
    with pytest.raises(UserError, match="dimensions"):
        QKModel.create(_cfg(dim=DIM + 1), pca)


def test_unknown_backbone_in_config(pca):
    with pytest.raises(UserError, match="unknown backbone"):
        QKModel.create(_cfg(backbone="vgg"), pca)


# ----------------------------------------------------------------------------- model folder
def test_save_load_round_trip(pca, tmp_path):
    from isc_qk.formats import read_json

    model = QKModel.create(_cfg(seed=4), pca)
    for v in model.backbone("k").trainable_variables:  # "trained": differs from any fresh init
        v.assign(v + 0.05)
    out = tmp_path / "model"
    model.save(out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["config.json", "gist_pca.npz", "gist_pca.json"] + [p.name for p in weights_files(out).values()]
    )
    meta = read_json(out / "config.json")
    assert meta["kind"] == "qk-model"
    assert meta["config"]["backbone"] == "tiny" and meta["config"]["spec"]["dim"] == 64

    loaded = QKModel.load(out)
    assert loaded.cfg == model.cfg and loaded.spec == model.spec
    np.testing.assert_array_equal(loaded.pca.components, pca.components)
    images, gist = _batch(3, seed=2)
    for side in ("q", "k"):
        np.testing.assert_array_equal(
            loaded.describe(side, images, gist).numpy(), model.describe(side, images, gist).numpy()
        )
    model.save(out)  # overwriting an existing folder works and leaves no temp files
    assert sorted(p.name for p in out.iterdir()) == names


def test_load_errors(pca, tmp_path):
    with pytest.raises(UserError, match="model folder not found"):
        QKModel.load(tmp_path / "absent")
    out = tmp_path / "model"
    QKModel.create(_cfg(), pca).save(out)
    (out / "k_head.weights.h5").unlink()
    with pytest.raises(UserError, match="missing k_head.weights.h5"):
        QKModel.load(out)
    (out / "k_head.weights.h5").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot load weights"):
        QKModel.load(out)
    QKModel.create(_cfg(), pca).save(out)
    (out / "gist_pca.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read the GIST PCA"):
        QKModel.load(out)


def test_load_refuses_other_config_kinds(pca, tmp_path):
    from isc_qk.formats import write_json

    out = tmp_path / "model"
    QKModel.create(_cfg(), pca).save(out)
    write_json(out / "config.json", {"kind": "gist-pca", "config": {}})
    with pytest.raises(UserError, match="not a QK model config"):
        QKModel.load(Path(out))


def test_init_model_is_a_stage_artifact_another_pca_is_refused(pca, tmp_path, run_cli):
    """Same settings and PCA: a no-op; another PCA of the same dimension into the finished
    folder: refused in one line, the folder untouched (it used to keep the old model silently)."""
    from isc_qk.gist.descriptor import gist_descriptors
    from isc_qk.vectors import fit_pca

    pca.save(tmp_path / "a.npz")
    fit_pca(gist_descriptors(_gist_images(40, seed=7)), dim=DIM).save(tmp_path / "b.npz")
    args = ("init-model", "--backbone", "tiny", "--backbone-weights", "none", "--head-hidden", "16", "--out",
            tmp_path / "m")
    assert run_cli(*args, "--pca", tmp_path / "a.npz").code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}
    again = run_cli(*args, "--pca", tmp_path / "a.npz")
    assert again.code == 0
    other = run_cli(*args, "--pca", tmp_path / "b.npz")
    assert other.code == 2 and other.err.count("\n") == 1 and "made from other inputs" in other.err, other.err
    assert "Traceback" not in other.err
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()} == before
    changed = run_cli(*args[:-2], "--head-hidden", "0", "--out", tmp_path / "m", "--pca", tmp_path / "a.npz")
    assert changed.code == 2 and "other settings" in changed.err
