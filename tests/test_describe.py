"""describe: official per-set HDF5 of Q or K descriptors; bad images skipped; shards; CLI."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from isc_qk.errors import UserError
from qk_world import DIM, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("qk_describe"))


@pytest.fixture(scope="module")
def model(world):
    from isc_qk.models.qk_model import QKModel

    return QKModel.load(world.model)


def _direct(model, side, folder):
    from isc_qk.formats.images import list_images
    from isc_qk.qk.inputs import InputPlan, load_batch

    files = list_images(folder)
    b = load_batch(files, 0, InputPlan.for_side(model.side(side)))
    return [f.id for f in files], model.describe(side, b.pixels, b.starts).numpy(), b.starts


def test_official_per_set_layout_and_values(world, model, tmp_path):
    from isc_qk.qk.describe import describe
    from isc_qk.formats import read_descriptors

    out = tmp_path / "queries.h5"
    rep = describe(world.model, "q", world.aug, out, batch=7, progress=False)
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["image_names", "vectors"]
        assert f["vectors"].dtype == np.float32 and f["vectors"].shape == (rep.descriptors, DIM)
        names = f["image_names"][()]
        assert all(isinstance(n, bytes) for n in names)
    d = read_descriptors(out)
    ids, exp, gist = _direct(model, "q", world.aug)
    assert d.ids == ids and len(ids) == 32
    np.testing.assert_allclose(d.vectors, exp, rtol=1e-5, atol=1e-6)
    # untrained: descriptor = 0.01 * FFN + gist256, i.e. close to the GIST-PCA baseline
    assert np.abs(d.vectors - gist).max() < 0.1 * np.abs(gist).max()
    assert rep.computed == 32 and rep.bad == []
    assert describe(world.model, "q", world.aug, out, progress=False).computed == 0  # finished: skipped
    with pytest.raises(UserError, match="other settings"):
        describe(world.model, "k", world.aug, out, progress=False)


def test_k_side_uses_the_k_model(world, model, tmp_path):
    from isc_qk.qk.describe import describe
    from isc_qk.formats import read_descriptors

    describe(world.model, "k", world.keys, tmp_path / "refs.h5", progress=False)
    q = read_descriptors(describe(world.model, "q", world.keys, tmp_path / "refs_q.h5", progress=False).out)
    k = read_descriptors(tmp_path / "refs.h5")
    _, exp_k, _ = _direct(model, "k", world.keys)
    np.testing.assert_allclose(k.vectors, exp_k, rtol=1e-5, atol=1e-6)
    assert not np.allclose(k.vectors, q.vectors)  # separate heads (different seeds)


def test_bad_images_are_skipped_and_shards_merge(world, tmp_path, run_cli):
    from isc_qk.formats import read_descriptors

    folder = tmp_path / "imgs"
    shutil.copytree(world.keys, folder)
    (folder / "T000005.jpg").write_bytes(b"")
    r = run_cli("describe", "--model", world.model, "--side", "k", "--images", folder,
                "--out", tmp_path / "all.h5", "--no-progress")
    assert r.code == 0, r.err
    assert "unreadable" in r.err and "T000005.jpg" in r.err
    whole = read_descriptors(tmp_path / "all.h5")
    assert "T000005" not in whole.ids and len(whole.ids) == 15
    for i in range(2):
        r = run_cli("describe", "--model", world.model, "--side", "k", "--images", folder,
                    "--out", tmp_path / "sh.h5", "--shard", f"{i}/2", "--no-progress")
        assert r.code == 0, r.err
    assert (tmp_path / "sh.shard-1-of-2.h5").is_file()
    r = run_cli("describe", "--merge", "--out", tmp_path / "sh.h5")
    assert r.code == 0, r.err
    merged = read_descriptors(tmp_path / "sh.h5")
    assert merged.ids == whole.ids and np.array_equal(merged.vectors, whole.vectors)
    r = run_cli("describe", "--model", world.model, "--side", "k", "--images", folder, "--out", tmp_path / "x.txt")
    assert r.code == 2 and ".h5" in r.err
