"""precompute: frozen-side feature tables (float16, resumable, sharded) and the model inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from isc_qk.errors import UserError
from qk_world import DIM, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("qk_precompute"))


@pytest.fixture(scope="module")
def model(world):
    from isc_qk.models.qk_model import QKModel

    return QKModel.load(world.model)


def _expected_rows(model, side, folder):
    """The head inputs computed directly with the model, image by image (no chunking)."""
    from isc_qk.formats.images import list_images
    from isc_qk.qk.inputs import InputPlan, load_batch

    files = list_images(folder)
    rows = []
    for f in files:
        b = load_batch([f], 0, InputPlan.for_side(model.side(side)))
        rows.append(model.features(side, b.pixels, b.starts).numpy()[0])
    return [f.id for f in files], np.stack(rows)


def test_gist256_matches_the_gist_pca_baseline(world, model):
    """One decode feeds both inputs; its GIST256 must be exactly the baseline's GIST-PCA256."""
    from conftest import gist960
    from isc_qk.formats.images import list_images
    from isc_qk.qk.inputs import InputPlan, load_batch

    files = list_images(world.aug)
    b = load_batch(files, 0, InputPlan.for_side(model.side("q")))
    ref = model.pca.transform(gist960([f.path for f in files]))
    np.testing.assert_allclose(b.starts, ref, rtol=0, atol=1e-6)
    assert b.pixels.shape == (len(files), 64, 64, 3) and b.pixels.dtype == np.float32
    assert 0 <= b.pixels.min() and b.pixels.max() <= 255 and b.pixels.max() > 1


def test_table_rows_are_the_head_inputs_in_float16(world, model, tmp_path):
    from isc_qk.qk.precompute import precompute, table_config
    from isc_qk.formats.feature_table import open_feature_table as open_table

    rep = precompute(world.model, "k", world.keys, tmp_path / "kfeats", batch=5, progress=False)
    ids, x = open_table(tmp_path / "kfeats")
    exp_ids, exp = _expected_rows(model, "k", world.keys)
    assert ids == exp_ids == world.key_ids
    assert x.dtype == np.float16 and x.shape == (16, model.spec.dim + DIM)
    np.testing.assert_allclose(x.astype(np.float32), exp, rtol=2e-3, atol=2e-3)
    assert (rep.rows, rep.width, rep.computed, rep.bad) == (16, x.shape[1], 16, [])
    cfg = table_config(tmp_path / "kfeats")
    assert cfg.side == "k" and cfg.n_images == 16 and cfg.backbone == "tiny"
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kfeats.config.json", "kfeats.ids.txt", "kfeats.npy", "kfeats.report.json"]


def test_interrupted_run_resumes_where_it_stopped(world, tmp_path, monkeypatch):
    import isc_qk.qk.forward as mi
    from isc_qk.qk.precompute import precompute
    from isc_qk.formats.feature_table import open_feature_table as open_table

    full = precompute(world.model, "q", world.aug, tmp_path / "full", batch=4, progress=False)
    real = mi.prepare_batch
    calls = {"n": 0}

    def dies_on_third_chunk(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(mi, "prepare_batch", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        precompute(world.model, "q", world.aug, tmp_path / "part", batch=4, workers=1, progress=False)
    monkeypatch.setattr(mi, "prepare_batch", real)
    state = json.loads((tmp_path / "part.progress.json").read_text())
    assert state["rows_done"] == 8  # two chunks of 4 were safely written
    assert not (tmp_path / "part.npy").exists()  # never a half table under the final name

    rep = precompute(world.model, "q", world.aug, tmp_path / "part", batch=4, progress=False)
    assert rep.computed == full.rows - 8
    ids_a, a = open_table(tmp_path / "full")
    ids_b, b = open_table(tmp_path / "part")
    assert ids_a == ids_b and np.array_equal(a, b)
    again = precompute(world.model, "q", world.aug, tmp_path / "part", batch=4, progress=False)
    assert again.computed == 0  # finished: skipped


def test_other_settings_are_refused(world, tmp_path):
    from isc_qk.qk.precompute import precompute

    precompute(world.model, "k", world.keys, tmp_path / "t", batch=16, progress=False)
    with pytest.raises(UserError, match="other settings"):
        precompute(world.model, "q", world.keys, tmp_path / "t", batch=16, progress=False)


def test_shards_merge_to_the_unsharded_table(world, tmp_path):
    from isc_qk.qk.precompute import merge_precomputed, precompute, table_config
    from isc_qk.formats.feature_table import open_feature_table as open_table

    precompute(world.model, "k", world.keys, tmp_path / "whole", batch=8, progress=False)
    precompute(world.model, "k", world.keys, tmp_path / "sh", shard="0/3", batch=8, progress=False)
    with pytest.raises(UserError, match="not finished"):
        merge_precomputed(tmp_path / "sh")
    for i in (1, 2):
        precompute(world.model, "k", world.keys, tmp_path / "sh", shard=f"{i}/3", batch=8, progress=False)
    rep = merge_precomputed(tmp_path / "sh")
    ids_a, a = open_table(tmp_path / "whole")
    ids_b, b = open_table(tmp_path / "sh")
    assert rep.rows == 16 and ids_a == ids_b and np.array_equal(a, b)
    assert table_config(tmp_path / "sh") == table_config(tmp_path / "whole")


def test_unreadable_images_are_left_out_and_reported(world, model, tmp_path):
    from isc_qk.qk.precompute import precompute
    from isc_qk.formats.feature_table import open_feature_table as open_table

    folder = tmp_path / "imgs"
    shutil.copytree(world.keys, folder)
    (folder / "T000003.jpg").write_bytes(b"not a jpeg at all")
    (folder / "T000009.jpg").write_bytes((world.keys / "T000009.jpg").read_bytes()[:200])  # truncated
    rep = precompute(world.model, "k", folder, tmp_path / "t", batch=4, progress=False)
    ids, x = open_table(tmp_path / "t")
    assert len(rep.bad) == 2 and "T000003.jpg" in rep.bad[0] and "T000009.jpg" in rep.bad[1]
    assert ids == [i for i in world.key_ids if i not in ("T000003", "T000009")]
    assert json.loads((tmp_path / "t.report.json").read_text())["bad"] == rep.bad
    exp_ids, exp = _expected_rows(model, "k", world.keys)
    keep = [exp_ids.index(i) for i in ids]
    np.testing.assert_allclose(x.astype(np.float32), exp[keep], rtol=2e-3, atol=2e-3)


def test_cli_precompute(world, tmp_path, run_cli):
    r = run_cli("precompute", "--model", world.model, "--side", "k", "--images", world.keys,
                "--out", tmp_path / "feats", "--batch", "8", "--no-progress")
    assert r.code == 0, r.err
    assert "precompute" in r.out and "16" in r.out
    assert (tmp_path / "feats.npy").is_file()
    r = run_cli("precompute", "--model", world.model, "--side", "x", "--images", world.keys, "--out", tmp_path / "f2")
    assert r.code == 2 and "error:" in r.err and "--side" in r.err
    r = run_cli("precompute", "--out", tmp_path / "f3")
    assert r.code == 2 and "--model" in r.err
