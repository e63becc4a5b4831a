"""Mining against cached descriptors (qk.mining, qk.cached_side): the same pairs, loss and gradients
as the uncached path and the naive reference, on the device or streamed from the host, with ties,
duplicate rows and several positives per row; the cache is resumable after kill -9, byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from isc_qk.configs import LossConfig, ModelConfig
from isc_qk.errors import UserError
from isc_qk.models.heads import build_head
from isc_qk.qk.loss import cached_qk_loss, mine_hard_negatives, naive_qk_loss, qk_loss
from isc_qk.qk.mining import KeyTable, aligned_empty, load_aligned, read_rows

DIM = 16
FEAT = 24
WIDTH = FEAT + DIM  # a head's input: features + start vector
SCALE = 0.06


def _brute_top(d2: np.ndarray, pairs: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) smallest-d2 non-positive pairs of a (B, T) matrix, ties by flat index (float64)."""
    b, t = d2.shape
    flat = np.arange(b * t)
    d = d2.reshape(-1)
    keep = ~np.isin(flat, pairs[:, 0] * t + pairs[:, 1]) if len(pairs) else np.ones(b * t, bool)
    order = np.lexsort((flat[keep], d[keep]))[:n]
    sel = flat[keep][order]
    return np.stack([sel // t, sel % t], axis=1)


def _d2(q, keys) -> np.ndarray:
    q, keys = np.asarray(q, np.float64), np.asarray(keys, np.float64)
    return ((q[:, None, :] - keys[None]) ** 2).sum(-1)


def _tie_problem(seed: int, n_rows: int = 6, n_table: int = 300, dim: int = DIM):
    """Integer-valued descriptors (every d2 exact in float32): many equal distances, duplicate
    table rows, a batch row equal to a table row (d2 = 0), several positives per row."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2, size=(n_table, dim)).astype(np.float32)
    keys[50:60] = keys[40]  # duplicate rows
    q = rng.integers(0, 2, size=(n_rows, dim)).astype(np.float32)
    q[2] = keys[40]  # zero distance to 11 rows, one of them a positive
    pairs = np.array([[0, 5], [1, 7], [1, 8], [1, 9], [2, 40], [3, 0], [5, n_table - 1]])
    return q, keys, pairs


# ----------------------------------------------------------------------------- exact selection
@pytest.mark.parametrize("where", ["device", "host"])
@pytest.mark.parametrize("chunk, block", [(7, 50), (64, 1000), (100_000, 64)])
def test_mining_is_the_global_top_with_the_flat_index_tie_rule(where, chunk, block):
    q, keys, pairs = _tie_problem(0)
    d2 = _d2(q, keys)
    assert len(np.unique(d2)) < 20  # plenty of ties
    table = KeyTable(keys, where, chunk=chunk, block=block)
    assert table.placement == ("resident" if where == "device" else "host")
    for n in (1, 30, 6 * 300 - 7):  # down to every non-positive pair
        got, got_d2 = table.mine(tf.constant(q), pairs, n)
        want = _brute_top(d2, pairs, n)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_d2, d2[want[:, 0], want[:, 1]].astype(np.float32))
        assert not (np.signbit(got_d2)).any()  # +0.0, never -0.0


def test_mining_random_descriptors_and_no_positives():
    rng = np.random.default_rng(3)
    keys = rng.normal(scale=SCALE, size=(2000, DIM)).astype(np.float32)
    q = (keys[rng.choice(2000, 9)] + rng.normal(scale=SCALE / 3, size=(9, DIM))).astype(np.float32)
    want = _brute_top(_d2(q, keys), np.empty((0, 2), np.int64), 45)
    for where, chunk in (("device", 512), ("host", 333), ("auto", 100_000)):
        got, _ = KeyTable(keys, where, chunk=chunk, block=700).mine(tf.constant(q), np.empty((0, 2), np.int64), 45)
        np.testing.assert_array_equal(got, want)
    assert np.bincount(want[:, 0], minlength=9).max() > 5  # global, not M per row


def test_cached_loss_equals_naive_loss_and_gradients_on_adversarial_data():
    """Ties, duplicates, a zero distance and several positives per row: cached_qk_loss == the
    naive all-rows loss (frozen other side), the loss and the gradient of the trainable side."""
    q0, keys, pairs = _tie_problem(1)
    cfg = LossConfig(m=4, tau=2.0)
    w = tf.Variable(np.eye(DIM, dtype=np.float32))  # the "trainable side": q = q0 @ w
    for where in ("device", "host"):
        table = KeyTable(keys, where, chunk=37, block=101)
        with tf.GradientTape(persistent=True) as tape:
            q = tf.matmul(tf.constant(q0), w)
            fast, stats = cached_qk_loss(q, table, pairs, cfg)
            naive = naive_qk_loss(q, tf.constant(keys), pairs, cfg)
        np.testing.assert_allclose(float(fast), float(naive), rtol=1e-6)
        np.testing.assert_allclose(tape.gradient(fast, w).numpy(), tape.gradient(naive, w).numpy(), rtol=1e-5, atol=1e-7)
        assert stats["n_neg"] == 6 * 4 and stats["n_pos"] == len(pairs) and stats["d2_neg_min"] == 0.0


def _head(seed: int, feat: int = FEAT):
    return build_head(feat, ModelConfig(head_hidden=0, dim=DIM, residual_scale=1.0, output_l2=True), seed=seed)


def _trained_like(head, seed: int):
    """A linear head with non-zero weights (an untrained one is zero: the start itself)."""
    rng = np.random.default_rng(seed)
    for v in head.weights:
        v.assign(rng.normal(scale=0.05, size=v.shape).astype(np.float32))
    return head


@pytest.mark.parametrize("n_rows, n_table, copies, m", [(8, 400, 1, 3), (6, 300, 4, 5), (4, 50, 2, 10)])
def test_cached_equals_uncached_path_with_a_frozen_head(n_rows, n_table, copies, m):
    """The SSCD recipe's shape (linear head, L2 output): mining against the cached descriptors
    selects the pairs the head-over-the-table path selects, with the same loss and gradients."""
    rng = np.random.default_rng(n_table)
    feats = rng.normal(size=(n_table, WIDTH)).astype(np.float16)
    feats[10:13] = feats[9]  # duplicate table rows
    k_head, q_head = _trained_like(_head(1), 2), _trained_like(_head(3), 4)
    pairs = np.stack([np.repeat(np.arange(n_rows), copies), rng.choice(n_table, n_rows * copies, replace=False)], 1)
    x = tf.constant(feats[pairs[::copies, 1]].astype(np.float32) + rng.normal(scale=0.1, size=(n_rows, WIDTH)).astype(np.float32))
    cached = k_head(tf.cast(feats, tf.float32)).numpy()
    cfg = LossConfig(m=m, tau=2.0)
    table = KeyTable(cached, "auto", chunk=64)
    with tf.GradientTape(persistent=True) as tape:
        q = q_head(x)
        old, old_stats = qk_loss(q, k_head, feats, pairs, cfg, chunk=50)
        new, new_stats = cached_qk_loss(q, table, pairs, cfg)
    np.testing.assert_allclose(float(new), float(old), rtol=1e-6)
    for a, b in zip(tape.gradient(new, q_head.weights), tape.gradient(old, q_head.weights)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    n = n_rows * m
    np.testing.assert_array_equal(table.mine(q, pairs, n)[0], mine_hard_negatives(q, k_head, feats, pairs, n, chunk=50))
    assert new_stats["rows"] == old_stats["rows"]


def test_cached_equals_uncached_path_on_exact_ties():
    """A head that returns its start part exactly (residual scale 0) on 0/1 start vectors: every
    d2 is an exact small integer, ties everywhere; both paths pick the same pairs (flat-index
    rule) and give the same loss and gradients."""
    rng = np.random.default_rng(8)
    head = build_head(FEAT, ModelConfig(head_hidden=0, dim=DIM, residual_scale=0.0), seed=0)
    feats = np.concatenate([rng.normal(size=(500, FEAT)), rng.integers(0, 2, size=(500, DIM))], 1).astype(np.float16)
    feats[100:110] = feats[99]  # duplicates too
    q0 = tf.constant(rng.integers(0, 2, size=(6, DIM)).astype(np.float32))
    w = tf.Variable(np.eye(DIM, dtype=np.float32))
    pairs = np.array([[0, 99], [0, 3], [1, 7], [2, 8], [2, 9], [2, 10], [4, 499], [5, 0]])
    cfg = LossConfig(m=7, tau=2.0)
    table = KeyTable(head(tf.cast(feats, tf.float32)).numpy(), "auto", chunk=64)
    with tf.GradientTape(persistent=True) as tape:
        q = tf.matmul(q0, w)
        old, _ = qk_loss(q, head, feats, pairs, cfg, chunk=33)
        new, _ = cached_qk_loss(q, table, pairs, cfg)
    d2 = _d2(q0, feats[:, FEAT:].astype(np.float32))
    assert len(np.unique(d2)) < 20
    np.testing.assert_array_equal(table.mine(q, pairs, 42)[0], mine_hard_negatives(q, head, feats, pairs, 42, chunk=33))
    np.testing.assert_array_equal(table.mine(q, pairs, 42)[0], _brute_top(d2, pairs, 42))
    np.testing.assert_allclose(float(new), float(old), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(new, w).numpy(), tape.gradient(old, w).numpy(), rtol=1e-5, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(UserError, match="--table-device must be one of"):
        KeyTable(np.zeros((3, 4), np.float32), "gpu")
    with pytest.raises(ValueError, match="float32"):
        KeyTable(np.zeros((3, 4), np.float16))
    table = KeyTable(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="out of range"):
        cached_qk_loss(tf.zeros((2, 4)), table, np.array([[0, 3]]), LossConfig(m=1))


# ----------------------------------------------------------------------------- the int8 first pass
needs_int8 = pytest.mark.skipif(
    not __import__("isc_qk.qk.first_pass", fromlist=["int8_available"]).int8_available(DIM),
    reason="no int8 dot-product instructions or onnxruntime here")


@needs_int8
@pytest.mark.parametrize("problem", ["ties", "random"])
def test_int8_first_pass_selects_exactly_what_the_float32_pass_selects(problem, tmp_path, monkeypatch):
    """Same pairs and the same d2, bit for bit, as the float32 device pass: on integer-valued
    descriptors with ties, duplicates and a zero distance, and on clustered float descriptors;
    from a memory-mapped cache; and when tau is too small (the proven retry)."""
    import isc_qk.qk.first_pass as fp

    rng = np.random.default_rng(4)
    if problem == "ties":
        q, keys, pairs = _tie_problem(2, n_table=3000)
    else:
        centres = rng.normal(size=(40, DIM))
        keys = (centres[rng.integers(0, 40, 5000)] + rng.normal(scale=0.3, size=(5000, DIM))).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        q = (keys[:8] + rng.normal(scale=0.1, size=(8, DIM))).astype(np.float32)
        pairs = np.stack([np.repeat(np.arange(8), 2), np.concatenate([[i, i + 8] for i in range(8)])], 1)
    np.save(tmp_path / "k.npy", keys)
    mm = np.load(tmp_path / "k.npy", mmap_mode="r")
    exact = KeyTable(keys, "device", chunk=1000, first_pass="none")
    fast = KeyTable(mm, "auto", first_pass="int8")
    assert fast.placement == "host, int8 first pass" and fast.first is not None
    for n in (1, 40, 200):
        want, want_d2 = exact.mine(tf.constant(q), pairs, n)
        got, got_d2 = fast.mine(tf.constant(q), pairs, n)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_d2, want_d2)
        assert fast.first.last["retries"] == 0 and fast.first.last["rows"] < len(keys)  # it really pruned
    monkeypatch.setattr(fp.Int8FirstPass, "_tau", lambda self, q, pairs, n: 0.0)  # far too small a threshold
    got, got_d2 = fast.mine(tf.constant(q), pairs, 40)
    np.testing.assert_array_equal(got, exact.mine(tf.constant(q), pairs, 40)[0])
    assert fast.first.last["retries"] == 1
    np.testing.assert_array_equal(fast.rows(np.array([3, 7])).numpy(), keys[[3, 7]])
    fast.close()


def test_first_pass_choice():
    keys = np.zeros((100, DIM), np.float32)
    assert KeyTable(keys, first_pass="auto").first is None  # small tables: the float32 pass alone
    assert KeyTable(keys, first_pass="none").first is None
    with pytest.raises(UserError, match="--first-pass must be one of"):
        KeyTable(keys, first_pass="fp16")


# ----------------------------------------------------------------------------- host arrays
def test_aligned_arrays_and_file_reads(tmp_path):
    a = aligned_empty((5, 3))
    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.dtype == np.float32
    x = np.arange(70 * 6, dtype=np.float16).reshape(70, 6)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(read_rows(mm, 13, 29), x[13:29])
    np.testing.assert_array_equal(read_rows(mm, 60, 99), x[60:])
    y = load_aligned(mm, block=16)
    assert y.dtype == np.float32 and y.ctypes.data % 64 == 0
    np.testing.assert_array_equal(y, x.astype(np.float32))


# ----------------------------------------------------------------------------- the cache artifact
KILL_SCRIPT = r"""
import os, signal, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path
import numpy as np
import isc_qk.qk.cached_side as cs
from test_mining import _cache_inputs

cs.CHUNK = 100
kill_at = int(sys.argv[2])
real = cs.read_rows
def read_rows(table, start, stop):
    if start >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the build
    return real(table, start, stop)
cs.read_rows = read_rows
head, table, prefix = _cache_inputs(Path(sys.argv[1]))
cs.cached_side(head, "k", table, prefix, Path(sys.argv[1]) / "cache", progress=False)
"""


def _cache_inputs(root: Path):
    """A float16 feature table with ids on disk and a seeded linear L2 head."""
    from isc_qk.formats.feature_table import write_ids

    rng = np.random.default_rng(0)
    if not (root / "feats.npy").is_file():
        np.save(root / "feats.npy", rng.normal(size=(1050, WIDTH)).astype(np.float16))
        write_ids(root / "feats.ids.txt", [f"T{i:05d}" for i in range(1050)])
    head = _trained_like(_head(5), 6)
    return head, np.load(root / "feats.npy", mmap_mode="r"), root / "feats"


def test_cache_resumes_after_kill_9_byte_identical(tmp_path, monkeypatch):
    import isc_qk.qk.cached_side as cs

    head, table, prefix = _cache_inputs(tmp_path)
    monkeypatch.setattr(cs, "CHUNK", 100)
    ref = cs.cached_side(head, "k", table, prefix, tmp_path / "ref", progress=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), str(Path(__file__).parent)])}
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), "500"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    progress = list((tmp_path / "cache").glob("side-k-*.progress.json"))
    assert len(progress) == 1 and '"rows_done": 500' in progress[0].read_text()  # 5 chunks were done
    assert not list((tmp_path / "cache").glob("side-k-*[0-9a-f].npy"))  # not finished
    out = cs.cached_side(head, "k", table, prefix, tmp_path / "cache", progress=False)
    assert out.name == ref.name
    assert (tmp_path / "cache" / f"{out.name}.npy").read_bytes() == (tmp_path / "ref" / f"{ref.name}.npy").read_bytes()
    report = (tmp_path / "cache" / f"{out.name}.report.json").read_text()
    assert '"computed": 550' in report  # only the rows the killed run had not done
    cached = cs.open_cached_side(out)
    np.testing.assert_allclose(cached, head(tf.cast(np.asarray(table), tf.float32)).numpy(), rtol=1e-6, atol=1e-7)
    # a finished cache is reused; another head's cache replaces it
    assert cs.cached_side(head, "k", table, prefix, tmp_path / "cache", progress=False) == out
    other = _trained_like(_head(5), 7)
    new = cs.cached_side(other, "k", table, prefix, tmp_path / "cache", progress=False)
    assert new != out and not list((tmp_path / "cache").glob(f"{out.name}*"))


def test_cache_refuses_a_table_with_nan(tmp_path):
    import isc_qk.qk.cached_side as cs
    from isc_qk.formats.feature_table import write_ids

    x = np.ones((40, WIDTH), np.float16)
    x[33, 2] = np.nan
    np.save(tmp_path / "bad.npy", x)
    write_ids(tmp_path / "bad.ids.txt", [str(i) for i in range(40)])
    with pytest.raises(UserError, match="NaN or inf"):
        cs.cached_side(_head(0), "q", np.load(tmp_path / "bad.npy", mmap_mode="r"), tmp_path / "bad", tmp_path / "c",
                       progress=False)
