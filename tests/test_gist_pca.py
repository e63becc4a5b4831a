"""The one PCA (`vectors.fit_pca`, `formats.pca`): fitted on training data only, whitening,
persistence; a start's vectors (`starts.start.Start`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isc_qk.formats.pca import PCAModel, config_path
from isc_qk.vectors import fit_pca


def _train_data(n: int = 400, d: int = 960, seed: int = 0) -> np.ndarray:
    """Rows with a decaying spectrum so PCA variances are clearly ordered and not all 1."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(d))
    return (rng.standard_normal((n, d)) * scales + 0.3).astype(np.float32)


def test_fit_on_given_training_array_only_no_whitening():
    train = _train_data()
    other = _train_data(seed=1) + 5.0  # e.g. references: must not influence the model
    pca = fit_pca(train, dim=256, seed=7, train_ids=[f"T{i}" for i in range(len(train))])
    assert pca.components.shape == (256, 960) and pca.mean.shape == (960,)
    np.testing.assert_allclose(pca.mean, train.mean(axis=0), atol=1e-5)
    z = pca.transform(train)
    assert z.dtype == np.float32 and z.shape == (400, 256)
    assert np.abs(z.mean(axis=0)).max() < 1e-4  # centred on the training mean
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(256), atol=1e-4)
    var = z.var(axis=0, ddof=1)
    assert np.all(np.diff(var) <= 1e-6)  # decreasing
    assert not np.allclose(var, 1.0, atol=0.1)  # not whitened
    np.testing.assert_allclose(var, pca.explained_variance, rtol=1e-3)
    # transform is exactly the linear map, no re-normalisation
    np.testing.assert_allclose(pca.transform(other), (other - pca.mean) @ pca.components.T, rtol=1e-4, atol=1e-4)


def test_whitened_pca_gives_unit_variance_and_round_trips(tmp_path):
    # why: the demo's start is whitened GIST-PCA (its first components dominate raw distances)
    train = _train_data(n=300, d=120)
    plain, white = fit_pca(train, dim=32), fit_pca(train, dim=32, whiten=True)
    assert not plain.whiten and white.whiten
    z = white.transform(train)
    np.testing.assert_allclose(z.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    np.testing.assert_allclose(z, plain.transform(train) / np.sqrt(plain.explained_variance), rtol=1e-4, atol=1e-5)
    back = PCAModel.load(white.save(tmp_path / "w.npz"))
    assert back.whiten and json.loads(config_path(tmp_path / "w.npz").read_text())["whiten"] is True
    np.testing.assert_array_equal(back.transform(train[:7]), z[:7])


def test_whitened_start_is_l2_normalised():
    from isc_qk.encoders import create
    from isc_qk.starts.start import Start

    train = _train_data(n=200, d=960)
    gist = create("gist")
    plain = Start(gist, fit_pca(train, dim=16)).vectors(train[:5])
    white = Start(gist, fit_pca(train, dim=16, whiten=True)).vectors(train[:5])
    assert not np.allclose(np.linalg.norm(plain, axis=1), 1.0)  # GIST-PCA keeps its raw scale
    np.testing.assert_allclose(np.linalg.norm(white, axis=1), 1.0, rtol=1e-5)


def test_fit_needs_enough_vectors():
    with pytest.raises(ValueError):
        fit_pca(_train_data(n=10), dim=256)


def test_save_load_round_trip(tmp_path):
    train = _train_data(n=300)
    ids = [f"T{i:05d}" for i in range(300)]
    pca = fit_pca(train, dim=256, seed=3, train_ids=ids)
    path = pca.save(tmp_path / "pca256.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pca256.json", "pca256.npz"]  # no temp files
    cfg = json.loads(config_path(path).read_text())
    assert cfg["n_train"] == 300 and cfg["seed"] == 3 and cfg["train_ids"] == ids
    assert cfg["dim_in"] == 960 and cfg["dim_out"] == 256 and cfg["whiten"] is False
    back = PCAModel.load(path)
    np.testing.assert_array_equal(back.mean, pca.mean)
    np.testing.assert_array_equal(back.components, pca.components)
    np.testing.assert_array_equal(back.transform(train[:5]), pca.transform(train[:5]))
    assert back.config["train_ids"] == ids
