"""Score normalisation folded into descriptors: per-vector independence, definitions, artifacts, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from isc_qk.errors import UserError
from isc_qk.formats import Descriptors, read_descriptors, write_descriptors
from isc_qk.configs import NormConfig
from isc_qk.normalize.files import fit_normalizer_files, normalize_file
from isc_qk.normalize.normalizer import Normalizer, fit_normalizer
from isc_qk.vectors import l2_normalize


def clustered(n: int, d: int, seed: int, n_centres: int = 20) -> np.ndarray:
    """Descriptors with structure (clusters), like real ones: common directions to subtract."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(n_centres, d))
    x = centres[rng.integers(0, n_centres, n)] + 0.6 * rng.normal(size=(n, d))
    return x.astype(np.float32)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(n)]


ALL_CONFIGS = [
    NormConfig(method="nes"),
    NormConfig(method="nes", dba_k=5),
    NormConfig(method="whiten", dim=32),
    NormConfig(method="none"),
]


# --------------------------------------------------------------------------- independence
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.method}-dba{c.dba_k}-dim{c.dim}")
@pytest.mark.parametrize("d", [48, 300])
def test_one_vector_does_not_depend_on_the_rest_of_the_set(cfg, d):
    norm = fit_normalizer(clustered(400, d, seed=0), cfg)
    x = clustered(60, d, seed=1)
    whole = norm.apply(x)
    alone = np.stack([norm.apply(x[i : i + 1])[0] for i in (0, 17, 59)])
    np.testing.assert_allclose(alone, whole[[0, 17, 59]], atol=1e-5)
    # a different set around the same vectors changes nothing for them
    other = np.concatenate([clustered(30, d, seed=7), x[10:20], 5 * clustered(30, d, seed=8)])
    np.testing.assert_allclose(norm.apply(other)[30:40], whole[10:20], atol=1e-5)


# --------------------------------------------------------------------------- definitions
def test_nes_moves_vectors_away_from_their_training_neighbours():
    train = clustered(500, 64, seed=0)
    norm = fit_normalizer(train, NormConfig(method="nes", k=10, beta=0.35))
    x = clustered(80, 64, seed=1)
    t = l2_normalize(train)
    before = (l2_normalize(x) @ t.T).max(axis=1)
    after = (norm.apply(x) @ t.T).max(axis=1)
    assert (after < before).all()
    assert np.linalg.norm(norm.apply(x), axis=1) == pytest.approx(1.0, abs=1e-5)


def test_nes_matches_the_first_place_definition_brute_force():
    train, x = clustered(200, 32, seed=0), clustered(15, 32, seed=3)
    k, beta, dba_k, alpha = 7, 0.35, 4, 3.0
    norm = fit_normalizer(train, NormConfig(method="nes", k=k, beta=beta, dba_k=dba_k, dba_alpha=alpha))
    # DBA: weighted sum of each training vector's dba_k nearest training vectors (itself included)
    t = l2_normalize(train).astype(np.float64)
    sim = t @ t.T
    nn = np.argsort(-sim, axis=1)[:, :dba_k]
    w = np.take_along_axis(sim, nn, axis=1) ** alpha
    aug = (t[nn] * w[:, :, None]).sum(axis=1)
    aug /= np.linalg.norm(aug, axis=1, keepdims=True)
    np.testing.assert_allclose(norm.negatives, aug, atol=1e-5)
    # subtraction: x - beta * mean of its k nearest augmented training vectors, then L2
    xn = l2_normalize(x).astype(np.float64)
    nn = np.argsort(-(xn @ aug.T), axis=1)[:, :k]
    want = xn - beta * aug[nn].mean(axis=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(norm.apply(x), want, atol=1e-5)


def test_whitening_gives_identity_covariance_on_the_training_set():
    train = clustered(600, 48, seed=0) * np.linspace(0.1, 3.0, 48, dtype=np.float32)
    norm = fit_normalizer(train, NormConfig(method="whiten", dim=24))
    z = (l2_normalize(train) - norm.mean) @ norm.proj  # the whitened space, before the final L2
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(24), atol=1e-3)
    out = norm.apply(train)
    assert out.shape == (600, 24)
    assert np.linalg.norm(out, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_none_keeps_narrow_descriptors_unchanged():
    x = clustered(30, 64, seed=2)
    norm = fit_normalizer(clustered(100, 64, seed=0), NormConfig(method="none"))
    np.testing.assert_array_equal(norm.apply(x), x)


# --------------------------------------------------------------------------- shapes and dims
@pytest.mark.parametrize("method", ["nes", "whiten", "none"])
@pytest.mark.parametrize("d,dim,want", [(300, 256, 256), (64, 256, 64), (64, 16, 16)])
def test_output_dims_never_exceed_the_limit(method, d, dim, want):
    norm = fit_normalizer(clustered(320, d, seed=0), NormConfig(method=method, dim=dim))
    out = norm.apply(clustered(25, d, seed=1))
    assert out.shape == (25, want) and norm.output_dim == want <= 256
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_apply_refuses_wrong_dimension_and_nan():
    norm = fit_normalizer(clustered(100, 32, seed=0), NormConfig(method="nes"))
    with pytest.raises(UserError, match="dimension 16"):
        norm.apply(clustered(5, 16, seed=1))
    bad = clustered(5, 32, seed=1)
    bad[2, 3] = np.nan
    with pytest.raises(UserError, match="NaN"):
        norm.apply(bad)


def test_fit_refuses_impossible_settings():
    train = clustered(20, 64, seed=0)
    with pytest.raises(UserError, match="larger than the 20"):
        fit_normalizer(train, NormConfig(method="nes", k=30))
    with pytest.raises(UserError, match="needs more than 64"):
        fit_normalizer(train, NormConfig(method="whiten"))
    with pytest.raises(UserError, match="between 1 and 256"):
        fit_normalizer(train, NormConfig(method="none", dim=512))


# --------------------------------------------------------------------------- artifacts, idempotence
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.method}-dba{c.dba_k}")
def test_save_load_round_trip_gives_the_same_vectors(tmp_path, cfg):
    norm = fit_normalizer(clustered(300, 80, seed=0), cfg)
    norm.save(tmp_path / "norm")
    loaded = Normalizer.load(tmp_path / "norm")
    assert loaded.cfg == cfg
    x = clustered(20, 80, seed=5)
    np.testing.assert_array_equal(loaded.apply(x), norm.apply(x))


def test_file_stages_are_idempotent(tmp_path):
    write_descriptors(tmp_path / "train.h5", Descriptors(ids("T", 300), clustered(300, 300, seed=0)))
    write_descriptors(tmp_path / "q.h5", Descriptors(ids("Q", 40), clustered(40, 300, seed=1)))
    cfg = NormConfig(method="nes", dba_k=5)
    first = fit_normalizer_files(tmp_path / "train.h5", cfg, tmp_path / "norm")
    npz = (tmp_path / "norm" / "norm.npz").read_bytes()
    again = fit_normalizer_files(tmp_path / "train.h5", cfg, tmp_path / "norm")
    assert not first.skipped and again.skipped
    assert (tmp_path / "norm" / "norm.npz").read_bytes() == npz

    r1 = normalize_file(tmp_path / "norm", tmp_path / "q.h5", tmp_path / "q.norm.h5")
    v1 = read_descriptors(tmp_path / "q.norm.h5")
    r2 = normalize_file(tmp_path / "norm", tmp_path / "q.h5", tmp_path / "q.norm.h5")
    v2 = read_descriptors(tmp_path / "q.norm.h5")
    assert not r1.skipped and r2.skipped and r2.n == 40
    assert v1.ids == v2.ids == ids("Q", 40)
    np.testing.assert_array_equal(v1.vectors, v2.vectors)
    assert v1.dim == 256

    # a different input is recomputed, not mistaken for the old output
    write_descriptors(tmp_path / "q.h5", Descriptors(ids("Q", 40), clustered(40, 300, seed=2)))
    r3 = normalize_file(tmp_path / "norm", tmp_path / "q.h5", tmp_path / "q.norm.h5")
    assert not r3.skipped
    assert not np.allclose(read_descriptors(tmp_path / "q.norm.h5").vectors, v1.vectors)


# --------------------------------------------------------------------------- CLI
def _one_line_error(res) -> None:
    assert res.code == 2
    assert "Traceback" not in res.err
    assert res.err.strip().startswith("error:") and len(res.err.strip().splitlines()) == 1


def test_cli_fit_and_normalize(tmp_path, run_cli):
    write_descriptors(tmp_path / "train.h5", Descriptors(ids("T", 200), clustered(200, 64, seed=0)))
    write_descriptors(tmp_path / "r.h5", Descriptors(ids("R", 30), clustered(30, 64, seed=1)))
    res = run_cli("normalize-fit", "--train", tmp_path / "train.h5", "--method", "whiten", "--dim", "32",
                  "--out", tmp_path / "wh")
    assert res.code == 0, res.err
    assert "whiten" in res.out
    res = run_cli("normalize", "--norm", tmp_path / "wh", "--in", tmp_path / "r.h5", "--out", tmp_path / "r.wh.h5")
    assert res.code == 0, res.err
    out = read_descriptors(tmp_path / "r.wh.h5")
    assert out.ids == ids("R", 30) and out.dim == 32
    res = run_cli("normalize", "--norm", tmp_path / "wh", "--in", tmp_path / "r.h5", "--out", tmp_path / "r.wh.h5")
    assert res.code == 0 and "up to date" in res.out


def test_cli_errors_are_one_line(tmp_path, run_cli):
    write_descriptors(tmp_path / "train.h5", Descriptors(ids("T", 50), clustered(50, 64, seed=0)))
    write_descriptors(tmp_path / "narrow.h5", Descriptors(ids("Q", 5), clustered(5, 16, seed=1)))
    nan = clustered(5, 64, seed=1)
    nan[0, 0] = np.nan
    import h5py

    with h5py.File(tmp_path / "nan.h5", "w") as f:  # the writer refuses NaN, so write it raw
        f.create_dataset("vectors", data=nan)
        f.create_dataset("image_names", data=np.array([i.encode() for i in ids("Q", 5)], dtype=object),
                         dtype=h5py.string_dtype("ascii"))
    assert run_cli("normalize-fit", "--train", tmp_path / "train.h5", "--out", tmp_path / "n").code == 0

    n, o = tmp_path / "n", tmp_path / "o.h5"
    train = tmp_path / "train.h5"
    cases = {
        "dimension 16": ("normalize", "--norm", n, "--in", tmp_path / "narrow.h5", "--out", o),
        "NaN": ("normalize", "--norm", n, "--in", tmp_path / "nan.h5", "--out", o),
        "normaliser folder not found": ("normalize", "--norm", tmp_path / "nope", "--in", tmp_path / "narrow.h5",
                                        "--out", o),
        "file not found": ("normalize", "--norm", n, "--in", tmp_path / "missing.h5", "--out", o),
        "unknown normalisation method": ("normalize-fit", "--train", train, "--method", "pca", "--out", tmp_path / "m"),
        "larger than the 50": ("normalize-fit", "--train", train, "--k", "60", "--out", tmp_path / "k"),
        "other settings": ("normalize-fit", "--train", train, "--beta", "0.5", "--out", n),
    }
    for message, args in cases.items():
        res = run_cli(*args)
        _one_line_error(res)
        assert message in res.err, (message, res.err)
    assert not (tmp_path / "o.h5").exists()
