"""The gist-pca stage end to end on real JPEGs: fit on train only, describe, resume, shards."""

from __future__ import annotations

import numpy as np

from isc_qk.configs import PCAFitConfig
from isc_qk.encoders import create
from isc_qk.formats import read_descriptors
from isc_qk.stages.shards import Shard
from isc_qk.starts.stage import describe_start_set, fit_start_pca, merge_start_shards
from isc_qk.starts.start import raw_path


def gist960_path(out):
    """SET.h5 -> SET.gist960.h5, the raw GIST beside it."""
    return raw_path(out, create("gist"))


def _fit(tmp_path, image_folder, dim=8):
    train, train_ids = image_folder(24, "T", seed=1)
    return fit_start_pca("gist", train, tmp_path / "gist", PCAFitConfig(n_train=20, seed=3, dim=dim)), train_ids


def test_fit_uses_a_seeded_sample_of_training_images_only(tmp_path, image_folder):
    from isc_qk.formats.pca import PCAModel

    path, train_ids = _fit(tmp_path, image_folder)
    model = PCAModel.load(path)
    used = model.config["train_ids"]
    assert len(used) == 20 and set(used) <= set(train_ids)
    # a second fit with the same settings is a no-op (same file, not rewritten)
    mtime = path.stat().st_mtime_ns
    assert fit_start_pca("gist", tmp_path / "T_images_1", tmp_path / "gist", PCAFitConfig(n_train=20, seed=3, dim=8)) == path
    assert path.stat().st_mtime_ns == mtime


def test_describe_writes_both_layouts_and_resumes(tmp_path, image_folder):
    pca, _ = _fit(tmp_path, image_folder)
    refs, ref_ids = image_folder(10, "R", seed=2)
    out = tmp_path / "references.h5"
    rep = describe_start_set(pca, refs, out, chunk=4, progress=False)
    d256, d960 = read_descriptors(out), read_descriptors(gist960_path(out))
    assert d256.ids == sorted(ref_ids) and d256.vectors.shape == (10, 8)
    np.testing.assert_allclose(np.linalg.norm(d960.vectors, axis=1), 1.0, rtol=1e-5)
    assert rep.n_described == 10 and not rep.failures
    assert not (tmp_path / "references.h5.parts").exists()
    # a finished set is skipped
    assert describe_start_set(pca, refs, out, progress=False).skipped


def test_shards_merge_to_the_unsharded_output(tmp_path, image_folder, run_cli):
    pca, _ = _fit(tmp_path, image_folder)
    refs, _ = image_folder(9, "R", seed=2)
    whole = tmp_path / "whole.h5"
    describe_start_set(pca, refs, whole, progress=False)
    for i in range(3):
        describe_start_set(pca, refs, tmp_path / "sharded.h5", shard=Shard(i, 3), progress=False)
    merged = read_descriptors(merge_start_shards(tmp_path / "sharded.h5")[0])
    ref = read_descriptors(whole)
    assert merged.ids == ref.ids
    np.testing.assert_array_equal(merged.vectors, ref.vectors)
    # the CLI merges both outputs, 256-d and 960-d
    (tmp_path / "sharded.h5").unlink()
    assert run_cli("gist-pca", "--merge", "--out", tmp_path / "sharded.h5").code == 0
    m960 = read_descriptors(gist960_path(tmp_path / "sharded.h5"))
    np.testing.assert_array_equal(m960.vectors, read_descriptors(gist960_path(whole)).vectors)
    # a missing shard is refused
    (tmp_path / "sharded.shard-1-of-3.h5").unlink()
    res = run_cli("gist-pca", "--merge", "--out", tmp_path / "sharded.h5")
    assert res.code == 2 and "not finished" in res.err


def test_corrupt_images_are_reported_and_skipped(tmp_path, image_folder, run_cli):
    pca, _ = _fit(tmp_path, image_folder)
    refs, ref_ids = image_folder(5, "R", seed=2)
    (refs / "R999998.jpg").write_bytes(b"")
    (refs / "R999999.jpg").write_bytes(b"not a jpeg at all")
    res = run_cli("gist-pca", "--pca", pca, "--images", refs, "--out", tmp_path / "r.h5", "--workers", "1")
    assert res.code == 0, res.err
    assert "skipped 2 unreadable" in res.err
    assert read_descriptors(tmp_path / "r.h5").ids == sorted(ref_ids)


def test_cli_errors_are_one_line(tmp_path, run_cli):
    res = run_cli("gist-pca", "--out", tmp_path / "x")
    assert res.code == 2 and "Traceback" not in res.err and "error:" in res.err
    res = run_cli("gist-pca", "--pca", tmp_path / "missing.npz", "--images", tmp_path, "--out", tmp_path / "s.h5")
    assert res.code == 2 and "Traceback" not in res.err


def test_whitened_fit_gives_a_whitened_file_and_l2_start_vectors(tmp_path, image_folder):
    # why: the demo starts from whitened GIST-PCA; the setting must reach the file and describe
    from isc_qk.formats.pca import PCAModel

    train, _ = image_folder(24, "T", seed=1)
    refs, _ = image_folder(6, "R", seed=2)
    path = fit_start_pca("gist", train, tmp_path / "w", PCAFitConfig(n_train=None, dim=8, whiten=True))
    model = PCAModel.load(path)
    assert model.whiten and model.explained_variance is not None
    describe_start_set(path, refs, tmp_path / "r.h5", progress=False)
    np.testing.assert_allclose(np.linalg.norm(read_descriptors(tmp_path / "r.h5").vectors, axis=1), 1.0, rtol=1e-5)
