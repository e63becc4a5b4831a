"""The QK loss: formula, exact hard-negative mining, and naive == chunked (loss and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from isc_qk.errors import UserError
from isc_qk.configs import LossConfig
from isc_qk.qk.loss import (
    bce_loss,
    in_batch_loss,
    mine_hard_negatives,
    naive_qk_loss,
    qk_loss,
)
from isc_qk.configs import ModelConfig
from isc_qk.models.heads import build_head


def build_backbone(name: str):
    from isc_qk.encoders import create

    return create(name).model

DIM = 16
FEAT = 64  # the tiny backbone's feature width
SCALE = 0.06  # GIST-like magnitudes: squared distances of the order of tau


# ----------------------------------------------------------------------------- helpers
def _np_bce(d2p, d2n, b, cfg: LossConfig) -> float:
    d2p, d2n = np.asarray(d2p, np.float64), np.asarray(d2n, np.float64)
    x = np.maximum(d2n / cfg.tau, 1e-6)
    l_pos = np.sum(d2p / cfg.tau) / b
    l_neg = np.sum(-np.log(1.0 - np.exp(-x))) / (b * cfg.m)
    return cfg.w_pos * l_pos + cfg.w_neg * l_neg


def _brute_top(d2: np.ndarray, pairs: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) smallest-d2 non-positive pairs of a (B, T) matrix, ties by flat index."""
    b, t = d2.shape
    flat = np.arange(b * t)
    d = d2.reshape(-1).astype(np.float64).copy()
    keep = ~np.isin(flat, pairs[:, 0] * t + pairs[:, 1])
    order = np.lexsort((flat[keep], d[keep]))[:n]
    sel = flat[keep][order]
    return np.stack([sel // t, sel % t], axis=1)


def _head(seed: int, scale: float = 0.01, feat: int = FEAT):
    return build_head(feat, ModelConfig(head_hidden=32, dim=DIM, residual_scale=scale), seed=seed)


def _problem(n_rows: int, n_table: int, pos_per_row: int, seed: int):
    """Images for the trained side, a float16 table for the other side, positive pairs.

    Positive table rows get a GIST part close to their batch row's GIST, so positives are
    near and many negatives compete at distances of the order of tau.
    """
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(n_rows, 64, 64, 3)).astype(np.float32)
    gist = rng.normal(scale=SCALE, size=(n_rows, DIM)).astype(np.float32)
    table = np.concatenate(
        [rng.uniform(0, 2, size=(n_table, FEAT)), rng.normal(scale=SCALE, size=(n_table, DIM))], axis=1
    ).astype(np.float16)
    rows = rng.choice(n_table, size=n_rows * pos_per_row, replace=False)
    pairs = np.stack([np.repeat(np.arange(n_rows), pos_per_row), rows], axis=1).astype(np.int64)
    table[pairs[:, 1], FEAT:] = (gist[pairs[:, 0]] + rng.normal(scale=SCALE / 4, size=(len(pairs), DIM))).astype(
        np.float16
    )
    return images, gist, table, pairs


# ----------------------------------------------------------------------------- the formula
def test_bce_loss_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    cfg = LossConfig(tau=0.07, m=3, w_pos=1.0, w_neg=3.0)
    d2p = rng.uniform(0, 0.3, 8)
    d2n = np.concatenate([rng.uniform(0.001, 0.5, 20), [1e-4, 0.05, 40.0, 300.0]])
    got = float(bce_loss(tf.constant(d2p, tf.float32), tf.constant(d2n, tf.float32), 8, cfg))
    np.testing.assert_allclose(got, _np_bce(d2p, d2n, 8, cfg), rtol=1e-5)
    other = LossConfig(tau=0.2, m=5, w_pos=2.0, w_neg=0.5)
    got = float(bce_loss(tf.constant(d2p, tf.float32), tf.constant(d2n, tf.float32), 8, other))
    np.testing.assert_allclose(got, _np_bce(d2p, d2n, 8, other), rtol=1e-5)


def test_bce_loss_is_finite_at_zero_distance():
    d2n = tf.Variable([0.0, 1e-9, 0.01, 1e4])
    with tf.GradientTape() as tape:
        loss = bce_loss(tf.constant([0.0]), d2n, 1, LossConfig(m=4))
    grad = tape.gradient(loss, d2n).numpy()
    assert np.isfinite(float(loss)) and np.isfinite(grad).all()
    assert grad[2] < 0  # pushing a close negative away lowers the loss
    assert abs(grad[3]) < 1e-12  # a far negative no longer matters


# ----------------------------------------------------------------------------- mining
@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_mined_negatives_are_exactly_the_global_top(chunk):
    rng = np.random.default_rng(1)
    head = _head(2)
    _, gist, table, pairs = _problem(8, 500, 1, seed=3)
    q = tf.constant(np.concatenate([rng.uniform(0, 2, (8, FEAT)), gist], 1), tf.float32)
    q = _head(4)(q)
    keys = head(table.astype(np.float32)).numpy().astype(np.float64)
    d2 = ((q.numpy().astype(np.float64)[:, None, :] - keys[None]) ** 2).sum(-1)
    got = mine_hard_negatives(q, head, table, pairs, n_neg=24, chunk=chunk)
    assert got.dtype == np.int64 and got.shape == (24, 2)
    np.testing.assert_array_equal(got, _brute_top(d2, pairs, 24))
    # global, not per row: the hardest rows take more than their M share
    assert np.bincount(got[:, 0], minlength=8).max() > 3


@pytest.mark.parametrize("chunk", [3, 50, 1000])
def test_mining_ties_break_by_flat_index(chunk):
    """Integer-valued descriptors (exact in float32) with many equal distances."""
    rng = np.random.default_rng(5)
    head = _head(0, scale=0.0, feat=4)  # residual scale 0: the head returns the GIST part exactly
    table = np.concatenate([np.zeros((120, 4)), rng.integers(0, 2, size=(120, DIM))], 1).astype(np.float16)
    gist = rng.integers(0, 2, size=(6, DIM)).astype(np.float32)
    pairs = np.array([[0, 5], [1, 7], [1, 8], [3, 0], [5, 119]])
    d2 = ((gist[:, None, :] - table[None, :, 4:].astype(np.float32)) ** 2).sum(-1)
    assert len(np.unique(d2)) < 20  # plenty of ties
    got = mine_hard_negatives(tf.constant(gist), head, table, pairs, n_neg=40, chunk=chunk)
    np.testing.assert_array_equal(got, _brute_top(d2, pairs, 40))


def test_mining_caps_n_neg_at_the_non_positive_pairs():
    head = _head(1)
    _, gist, table, pairs = _problem(2, 5, 1, seed=0)
    q = tf.constant(np.concatenate([np.ones((2, FEAT)), gist], 1), tf.float32)
    got = mine_hard_negatives(_head(2)(q), head, table, pairs, n_neg=100, chunk=2)
    assert len(got) == 2 * 5 - 2
    assert not {tuple(p) for p in got} & {tuple(p) for p in pairs}


def test_mining_reads_a_memmapped_table_without_retracing(tmp_path):
    from isc_qk.qk.loss import _mining_kernel

    head = _head(3)
    _, gist, table, pairs = _problem(4, 300, 1, seed=2)
    np.save(tmp_path / "t.npy", table)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    q = _head(5)(tf.constant(np.concatenate([np.ones((4, FEAT)), gist], 1), tf.float32))
    a = mine_hard_negatives(q, head, table, pairs, 12, chunk=64)
    b = mine_hard_negatives(q, head, mm, pairs, 12, chunk=100)  # other last-chunk length
    c = mine_hard_negatives(q[:3], head, mm[:250], pairs[:3], 9, chunk=100)  # other B, T
    np.testing.assert_array_equal(a, b)
    assert len(c) == 9
    assert _mining_kernel(head, table.dtype).experimental_get_tracing_count() == 1


def test_bad_inputs():
    head = _head(0)
    _, gist, table, pairs = _problem(2, 10, 1, seed=0)
    q = tf.zeros((2, DIM))
    with pytest.raises(UserError, match="head expects"):
        mine_hard_negatives(q, head, table[:, :-1], pairs, 4)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        mine_hard_negatives(q, head, table, pairs[:, 0], 4)
    with pytest.raises(ValueError, match="out of range"):
        mine_hard_negatives(q, head, table, pairs + 10, 4)


# ----------------------------------------------------------------------------- naive == chunked
def _losses_and_grads(n_rows, n_table, pos_per_row, m, chunk, seed):
    """Run one train-q-like step both ways; return losses, stats and gradient lists."""
    images, gist, table, pairs = _problem(n_rows, n_table, pos_per_row, seed)
    backbone, q_head, k_head = build_backbone("tiny"), _head(10, scale=0.1), _head(11, scale=0.1)
    cfg = LossConfig(m=m)
    variables = backbone.trainable_variables + q_head.trainable_variables + k_head.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        q = q_head(tf.concat([backbone(images, training=True), gist], 1))
        fast, stats = qk_loss(q, k_head, table, pairs, cfg, chunk=chunk)
        naive = naive_qk_loss(q, k_head(tf.cast(table, tf.float32), training=True), pairs, cfg)
    g_fast = tape.gradient(fast, variables)
    g_naive = tape.gradient(naive, variables)
    return float(fast), float(naive), stats, g_fast, g_naive, variables


@pytest.mark.parametrize(
    "n_rows, n_table, pos_per_row, m, chunk",
    [
        (8, 500, 1, 3, 64),  # train-q: one source image per query
        (6, 400, 3, 3, 50),  # train-k: several augmented copies per key
        (4, 60, 2, 10, 16),  # B*M close to B*T: nearly every pair is selected
    ],
)
def test_qk_loss_equals_naive_loss_and_gradients(n_rows, n_table, pos_per_row, m, chunk):
    fast, naive, stats, g_fast, g_naive, variables = _losses_and_grads(n_rows, n_table, pos_per_row, m, chunk, 0)
    np.testing.assert_allclose(fast, naive, rtol=1e-5)
    assert stats["loss_neg"] > 0.01  # the negatives really take part
    assert stats["n_neg"] == n_rows * m and stats["n_pos"] == n_rows * pos_per_row
    assert stats["rows"] <= n_rows * (m + pos_per_row)
    assert {"d2_pos_mean", "d2_neg_mean", "d2_neg_min", "mine_s"} <= set(stats)
    assert 0 <= stats["d2_neg_min"] <= stats["d2_neg_mean"]
    for v, a, b in zip(variables, g_fast, g_naive):
        assert a is not None and b is not None, v.path
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=v.path)
    # the gradients are informative: every Q-backbone, Q-head and K-head variable moves
    assert all(float(tf.reduce_max(tf.abs(g))) > 1e-3 for g in g_fast)


def test_qk_loss_gives_zero_gradient_to_unselected_rows():
    """A table row never selected does not influence the loss (changing it changes nothing)."""
    images, gist, table, pairs = _problem(4, 200, 1, seed=4)
    backbone, q_head, k_head = build_backbone("tiny"), _head(1), _head(2)
    q = q_head(tf.concat([backbone(images), gist], 1))
    cfg = LossConfig(m=2)
    loss, stats = qk_loss(q, k_head, table, pairs, cfg)
    used = set(pairs[:, 1]) | set(mine_hard_negatives(q, k_head, table, pairs, 8)[:, 1])
    far = table.copy()
    unused = np.array(sorted(set(range(200)) - used))
    far[unused, FEAT:] = 50  # push every unused row far away: still never selected
    loss2, _ = qk_loss(q, k_head, far, pairs, cfg)
    assert float(loss) == float(loss2)
    assert stats["rows"] == len(used)


# ----------------------------------------------------------------------------- in-batch
def test_in_batch_loss_matches_brute_force():
    rng = np.random.default_rng(7)
    q = rng.normal(scale=SCALE, size=(6, DIM)).astype(np.float32)
    k = (q + rng.normal(scale=SCALE / 3, size=q.shape)).astype(np.float32)
    d2 = ((q[:, None].astype(np.float64) - k[None]) ** 2).sum(-1)
    diag = np.stack([np.arange(6)] * 2, 1)
    for m in (2, 10):  # 10: capped at B*(B-1) = 30 off-diagonal pairs
        cfg = LossConfig(m=m)
        sel = _brute_top(d2, diag, min(6 * m, 30))
        want = _np_bce(np.diag(d2), d2[sel[:, 0], sel[:, 1]], 6, cfg)
        np.testing.assert_allclose(float(in_batch_loss(tf.constant(q), tf.constant(k), cfg)), want, rtol=1e-5)


def test_in_batch_loss_gradients_push_positives_together():
    rng = np.random.default_rng(8)
    q = tf.Variable(rng.normal(scale=SCALE, size=(5, DIM)).astype(np.float32))
    k = tf.constant(rng.normal(scale=SCALE, size=(5, DIM)).astype(np.float32))
    cfg = LossConfig(m=2)
    with tf.GradientTape() as tape:
        loss = in_batch_loss(q, k, cfg)
    q.assign_sub(0.01 * tape.gradient(loss, q))
    assert float(in_batch_loss(q, k, cfg)) < float(loss)
    with pytest.raises(ValueError, match="both be"):
        in_batch_loss(q, k[:3], cfg)
