"""train-q / train-k / --negatives batch on a tiny real dataset: loss falls, the right parts
train, exact resume after a crash or Ctrl-C, refusals, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from isc_qk.errors import UserError
from qk_world import COPIES, N_KEYS, make_model, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    w = make_world(tmp_path_factory.mktemp("qk_train"))
    from isc_qk.qk.precompute import precompute

    # residual scale 1: the head's share of the descriptor is large, so a few dozen steps move the loss a lot
    w.fast = make_model(w.root, w.pca, "model_fast", residual_scale=1.0)
    precompute(w.model, "k", w.keys, w.root / "kfeats", batch=16, progress=False)
    precompute(w.fast, "k", w.keys, w.root / "kfeats_fast", batch=16, progress=False)
    precompute(w.fast, "q", w.aug, w.root / "qfeats_fast", batch=16, progress=False)
    return w


def _weights(model_dir):
    from isc_qk.models.qk_model import QKModel

    m = QKModel.load(model_dir)
    return {part: [w.numpy() for w in getattr(m, part).weights] for part in ("q_backbone", "k_backbone", "q_head", "k_head")}


def _changed(a, b) -> dict:
    return {p: any(not np.array_equal(x, y) for x, y in zip(a[p], b[p])) for p in a}


def _cfg(**kw):
    from qk_world import train_config

    base = dict(batch_size=8, m=2, lr=1e-3, steps=30, checkpoint_every=1000, workers=1)
    return train_config(**{**base, **kw})


def test_train_q_loss_falls_and_trains_q_backbone_q_head_k_head(world, tmp_path):
    from isc_qk.qk.train import train

    out = tmp_path / "q1"
    rep = train(world.fast, world.root / "kfeats_fast", world.aug, out, _cfg(side="q"), progress=False)
    assert rep.items == N_KEYS * COPIES and rep.table_rows == N_KEYS and rep.steps == 30
    assert np.mean(rep.losses[-5:]) < 0.5 * np.mean(rep.losses[:5])
    changed = _changed(_weights(world.fast), _weights(out))
    assert changed == {"q_backbone": True, "k_backbone": False, "q_head": True, "k_head": True}
    # the output folder is a complete model folder plus the run's records
    with open(out / "losses.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and float(rows[0]["loss"]) == pytest.approx(rep.losses[0], rel=1e-5)
    assert {"d2_pos_mean", "d2_neg_mean"} <= set(rows[0])
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "train_report.json").read_text())
    assert saved["steps"] == 30 and saved["last_loss"] == pytest.approx(rep.last_loss)
    assert json.loads((out / "train_config.json").read_text())["config"]["side"] == "q"
    assert not (out / "checkpoints").exists()
    again = train(world.fast, world.root / "kfeats_fast", world.aug, out, _cfg(side="q"), progress=False)
    assert again.skipped and again.losses == pytest.approx(rep.losses, rel=1e-5)


def test_train_k_loss_falls_and_trains_k_backbone_k_head_q_head(world, tmp_path):
    from isc_qk.qk.train import train

    out = tmp_path / "k1"
    rep = train(world.fast, world.keys, world.root / "qfeats_fast", out, _cfg(side="k"), progress=False)
    assert rep.items == N_KEYS and rep.table_rows == N_KEYS * COPIES  # each key has COPIES positives
    assert np.mean(rep.losses[-5:]) < 0.5 * np.mean(rep.losses[:5])
    changed = _changed(_weights(world.fast), _weights(out))
    assert changed == {"q_backbone": False, "k_backbone": True, "q_head": True, "k_head": True}


def test_batch_negatives_train_both_full_models(world, tmp_path):
    from isc_qk.qk.train import train

    out = tmp_path / "b1"
    rep = train(world.fast, world.keys, world.aug, out, _cfg(side="q", negatives="batch", steps=20), progress=False)
    assert rep.items == N_KEYS and rep.table_rows == 0
    assert np.mean(rep.losses[-5:]) < np.mean(rep.losses[:5])
    assert all(_changed(_weights(world.fast), _weights(out)).values())


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_exact_resume_after_crash(world, tmp_path, interrupt):
    """kill -9 (RuntimeError: no save, back to the last periodic checkpoint) or Ctrl-C (a
    checkpoint at the last finished step): the same call then ends with the same weights."""
    from isc_qk.qk.train import train

    cfg = _cfg(side="q", steps=10, checkpoint_every=3, lr=1e-3)
    ref = train(world.model, world.root / "kfeats", world.aug, tmp_path / "ref", cfg, progress=False)

    def crash(step, loss):
        if step == 7:
            raise interrupt("simulated")

    out = tmp_path / "resumed"
    with pytest.raises(interrupt):
        train(world.model, world.root / "kfeats", world.aug, out, cfg, progress=False, on_step=crash)
    assert not (out / "train_report.json").exists()
    rep = train(world.model, world.root / "kfeats", world.aug, out, cfg, progress=False)
    assert rep.resumed_from == (6 if interrupt is RuntimeError else 7)
    assert rep.losses == ref.losses  # same data order and the same numbers, step by step
    a, b = _weights(tmp_path / "ref"), _weights(out)
    for part in a:
        for x, y in zip(a[part], b[part]):
            np.testing.assert_array_equal(x, y)


def test_changed_settings_or_mismatched_table_are_refused(world, tmp_path):
    from isc_qk.qk.train import train

    out = tmp_path / "r"
    train(world.model, world.root / "kfeats", world.aug, out, _cfg(side="q", steps=2), progress=False)
    with pytest.raises(UserError, match="other settings"):
        train(world.model, world.root / "kfeats", world.aug, out, _cfg(side="q", steps=2, lr=5e-4), progress=False)
    # a K table computed with another model's K backbone
    from isc_qk.models.qk_model import QKModel

    other = QKModel.load(world.model)
    w = other.k_backbone.weights[0]
    w.assign(w.numpy() * 1.01)
    other.save(tmp_path / "other")
    with pytest.raises(UserError, match="another K backbone"):
        train(tmp_path / "other", world.root / "kfeats", world.aug, tmp_path / "x", _cfg(side="q", steps=2), progress=False)
    # train-q needs a K table, not a Q table
    with pytest.raises(UserError, match="K features"):
        train(world.fast, world.root / "qfeats_fast", world.aug, tmp_path / "y", _cfg(side="q", steps=2), progress=False)
    with pytest.raises(UserError, match="feature table prefix"):
        train(world.fast, world.keys, world.aug, tmp_path / "z", _cfg(side="q", steps=2), progress=False)


def test_cli_train_q_and_train_k(world, tmp_path, run_cli):
    common = ["--batch", "8", "--m", "2", "--steps", "3", "--workers", "1", "--no-progress"]
    r = run_cli("train-q", "--model", world.fast, "--keys", world.root / "kfeats_fast", "--queries", world.aug,
                "--out", tmp_path / "q", *common)
    assert r.code == 0, r.err
    assert "train-q" in r.out and "loss, last 5 steps" in r.out
    r = run_cli("train-k", "--model", world.fast, "--keys", world.keys, "--queries", world.root / "qfeats_fast",
                "--out", tmp_path / "k", *common)
    assert r.code == 0, r.err
    r = run_cli("train-k", "--model", world.fast, "--keys", world.keys, "--queries", world.root / "qfeats_fast",
                "--out", tmp_path / "kc", "--no-train-other-head", "--table-device", "host", *common)
    assert r.code == 0, r.err
    assert "cached" in r.out and json.loads((tmp_path / "kc" / "train_config.json").read_text())["config"][
        "train_other_head"] is False
    r = run_cli("train-k", "--model", world.fast, "--keys", world.keys, "--queries", world.root / "qfeats_fast",
                "--out", tmp_path / "bad-device", "--table-device", "tpu", *common)
    assert r.code == 2 and "--table-device must be one of" in r.err
    r = run_cli("train-q", "--model", world.fast, "--keys", world.keys, "--queries", world.aug,
                "--out", tmp_path / "b", "--negatives", "batch", *common)
    assert r.code == 0, r.err
    r = run_cli("train-q", "--model", world.fast, "--keys", world.keys, "--queries", world.aug,
                "--out", tmp_path / "bad", "--negatives", "nope", *common)
    assert r.code == 2 and "--negatives" in r.err


@pytest.mark.parametrize("side", ["q", "k"])
def test_a_frozen_other_head_mines_its_cached_descriptors_like_the_uncached_path(world, tmp_path, monkeypatch, side):
    """train_other_head=False: the other side's descriptors are cached once (qk.cached_side) and
    mined on the device; the run equals the head-over-the-table path (forced here), step by step."""
    import isc_qk.qk.train as train_mod

    keys, queries = (world.root / "kfeats_fast", world.aug) if side == "q" else (world.keys, world.root / "qfeats_fast")
    cfg = _cfg(side=side, train_other_head=False, steps=12)
    cached = train_mod.train(world.fast, keys, queries, tmp_path / "cached", cfg, progress=False)
    assert cached.mining.startswith("cached") and "resident" in cached.mining
    assert not list((tmp_path / "cached" / "cache").glob("side-*"))  # a finished stage drops its cache
    host = train_mod.train(world.fast, keys, queries, tmp_path / "host", _cfg(side=side, train_other_head=False, steps=12,
                                                                             table_device="host"), progress=False)
    assert "host" in host.mining and host.losses == cached.losses  # the same kernel on the same rows
    monkeypatch.setattr(train_mod, "cached_other_side", lambda cfg: False)
    old = train_mod.train(world.fast, keys, queries, tmp_path / "old", cfg, progress=False)
    assert old.mining.startswith(("K head", "Q head"))
    np.testing.assert_allclose(cached.losses, old.losses, rtol=1e-5)
    a, b = _weights(tmp_path / "cached"), _weights(tmp_path / "old")
    for part in a:
        for x, y in zip(a[part], b[part]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=part)
    other = "k_head" if side == "q" else "q_head"
    assert _changed(_weights(world.fast), a) == {"q_backbone": side == "q", "k_backbone": side == "k",
                                                 f"{side}_head": True, other: False}


def test_train_k_rows_are_keys_positives_their_copies_negatives_every_other_copy(world):
    """What the K phase uses: batch rows are the training KEYS (those with a copy in the table),
    the table is the Q features of EVERY edited copy, a key's positives are all its copies, and
    its negatives are mined over every other copy in the table, of any other key."""
    import tensorflow as tf

    from isc_qk.formats.feature_table import open_feature_table
    from isc_qk.formats.manifest import manifest_sources
    from isc_qk.models.qk_model import QKModel
    from isc_qk.qk.data import build_train_data
    from isc_qk.qk.mining import KeyTable

    data = build_train_data("k", "table", world.keys, world.root / "qfeats_fast")
    qids, qtable = open_feature_table(world.root / "qfeats_fast")
    source = manifest_sources(world.aug / "manifest.csv")
    assert [f.id for f in data.items] == world.key_ids and data.table.shape[0] == len(qids) == N_KEYS * COPIES
    for item, pos in zip(data.items, data.positives):
        assert sorted(qids[j] for j in pos) == sorted(q for q, s in source.items() if s == item.id)
        assert len(pos) == COPIES
    model = QKModel.load(world.fast)
    table = KeyTable(model.head("q")(tf.cast(np.asarray(qtable), tf.float32)).numpy())
    rows = np.arange(8)
    pairs = data.positive_pairs(rows)
    kids, ktable = open_feature_table(world.root / "kfeats_fast")
    x = model.head("k")(tf.cast(np.asarray(ktable)[[kids.index(data.items[r].id) for r in rows]], tf.float32))
    every = len(rows) * len(qids) - len(pairs)
    neg, _ = table.mine(x, pairs, every)  # n = every non-positive pair
    want = {(r, t) for r in range(len(rows)) for t in range(len(qids)) if source[qids[t]] != data.items[rows[r]].id}
    assert {tuple(p) for p in neg} == want and len(neg) == every


def test_cached_run_resumes_exactly_after_a_crash(world, tmp_path):
    from isc_qk.qk.train import train

    cfg = _cfg(side="k", train_other_head=False, steps=8, checkpoint_every=3)
    ref = train(world.fast, world.keys, world.root / "qfeats_fast", tmp_path / "ref", cfg, progress=False)

    def crash(step, loss):
        if step == 5:
            raise RuntimeError("simulated kill")

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError):
        train(world.fast, world.keys, world.root / "qfeats_fast", out, cfg, progress=False, on_step=crash)
    assert len(list((out / "cache").glob("side-q-*.npy"))) == 1  # the finished cache is kept for the resume
    rep = train(world.fast, world.keys, world.root / "qfeats_fast", out, cfg, progress=False)
    assert rep.resumed_from == 3 and rep.losses == ref.losses


def test_warmup_rises_from_zero_then_decays_to_alpha():
    from isc_qk.configs import TrainConfig
    from isc_qk.qk.train import lr_schedule

    cfg = TrainConfig(lr=1e-3, lr_alpha=0.5, warmup=0.1)
    s = lr_schedule(cfg, 100)
    assert float(s(0)) == 0.0
    assert abs(float(s(5)) - 5e-4) < 1e-9
    assert abs(float(s(10)) - 1e-3) < 1e-9
    assert abs(float(s(100)) - 5e-4) < 1e-9
    plain = lr_schedule(TrainConfig(lr=1e-3, lr_alpha=0.5), 100)
    assert abs(float(plain(0)) - 1e-3) < 1e-9 and abs(float(plain(100)) - 5e-4) < 1e-9


def test_a_record_from_before_a_new_setting_is_still_the_same_settings():
    from isc_qk.configs import TrainConfig, diff, to_dict

    old = to_dict(TrainConfig())
    del old["warmup"]  # written before --warmup existed: made with no warmup, the default
    assert diff(old, to_dict(TrainConfig()), defaults=to_dict(TrainConfig())) == []
    assert diff(old, to_dict(TrainConfig(warmup=0.2)), defaults=to_dict(TrainConfig())) == ["warmup: None -> 0.2"]
