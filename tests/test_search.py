"""The streamed global top-N search equals brute force, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from isc_qk.errors import UserError
from isc_qk.evaluation.search import faiss_threads, global_top_pairs, knn_pairs, query_batches


def _dyadic(rng, n, d, levels=9):
    """Vectors with values in {-1, -0.75, ..., 1}: every squared distance is exact in float32,
    so faiss (BLAS or direct) and numpy agree bit for bit, and many distances tie."""
    return (rng.integers(0, levels, (n, d)) / 4.0 - 1.0).astype(np.float32)


def _brute_force(xq, xb, n):
    d = ((xq[:, None, :].astype(np.float64) - xb[None, :, :]) ** 2).sum(-1)
    q, r = np.meshgrid(np.arange(len(xq)), np.arange(len(xb)), indexing="ij")
    q, r, d = q.ravel(), r.ravel(), d.ravel()
    order = np.lexsort((r, q, d))[:n]
    return q[order], r[order], d[order]


@pytest.mark.parametrize(
    "nq,nb,d,n",
    [
        (300, 400, 8, 1000),  # several growing batches, heavy ties at the cut
        (70, 50, 4, 700),  # tiny space: thousands of exact ties
        (40, 30, 3, 5000),  # n larger than all pairs: everything comes back
        (100, 80, 6, 1),  # a single pair
    ],
)
def test_global_top_pairs_equals_brute_force_with_ties(nq, nb, d, n):
    rng = np.random.default_rng(nq + nb + d)
    xq, xb = _dyadic(rng, nq, d), _dyadic(rng, nb, d)
    got = global_top_pairs(xq, xb, n)
    q, r, dist = _brute_force(xq, xb, n)
    assert len(got) == min(n, nq * nb)
    np.testing.assert_array_equal(got.query, q)
    np.testing.assert_array_equal(got.reference, r)
    np.testing.assert_array_equal(got.distance, dist.astype(np.float32))


def test_one_query_can_take_many_candidates():
    # query 0 sits on top of a cluster of 150 references: the global top 200 must contain all
    # 150 of its pairs, far more than 10 per query
    rng = np.random.default_rng(3)
    xb = _dyadic(rng, 400, 8)
    xb[:150] = 0.0
    xb[:150, 0] = np.repeat([0.0, 0.25], 75)
    xq = _dyadic(rng, 100, 8)
    xq[0] = 0.0
    got = global_top_pairs(xq, xb, 200)
    q, r, dist = _brute_force(xq, xb, 200)
    assert (got.query == 0).sum() >= 150
    np.testing.assert_array_equal(got.query, q)
    np.testing.assert_array_equal(got.reference, r)


def test_global_top_pairs_continuous_data_matches_sorted_distances():
    # continuous data: compare the retrieved pairs' set with brute force computed by faiss
    # itself on the same batches (no ties in practice)
    import faiss

    rng = np.random.default_rng(5)
    xq = rng.standard_normal((600, 16)).astype(np.float32)
    xb = rng.standard_normal((700, 16)).astype(np.float32)
    got = global_top_pairs(xq, xb, 3000)
    parts = []
    for i0, i1 in query_batches(len(xq)):
        D, I = faiss.knn(xq[i0:i1], xb, len(xb))
        parts.append((np.repeat(np.arange(i0, i1), len(xb)), I.ravel(), D.ravel()))
    q, r, d = (np.concatenate(p) for p in zip(*parts))
    order = np.lexsort((r, q, d))[:3000]
    assert set(zip(got.query.tolist(), got.reference.tolist())) == set(zip(q[order].tolist(), r[order].tolist()))
    assert np.all(np.diff(got.distance) >= 0)


def test_knn_pairs_equals_brute_force():
    rng = np.random.default_rng(7)
    xq = rng.standard_normal((50, 12)).astype(np.float32)
    xb = rng.standard_normal((90, 12)).astype(np.float32)
    got = knn_pairs(xq, xb, 5)
    d = ((xq[:, None] - xb[None]) ** 2).sum(-1)
    expected = np.argsort(d, axis=1)[:, :5]
    assert len(got) == 250
    for i in range(50):
        assert sorted(got.reference[got.query == i].tolist()) == sorted(expected[i].tolist())


def test_knn_is_capped_at_the_number_of_references():
    rng = np.random.default_rng(8)
    got = knn_pairs(_dyadic(rng, 4, 3), _dyadic(rng, 3, 3), 10)
    assert len(got) == 12 and len(set(zip(got.query.tolist(), got.reference.tolist()))) == 12


def test_query_batches_follow_the_official_schedule():
    sizes = [b - a for a, b in query_batches(100_000)]
    assert sizes[:4] == [32, 64, 128, 256]
    assert max(sizes) == 32768 and sum(sizes) == 100_000


def test_faiss_threads_restores_setting():
    import faiss

    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


def test_bad_arguments():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(UserError):
        global_top_pairs(x, x, 0)
    with pytest.raises(UserError, match="dimension"):
        global_top_pairs(x, np.zeros((3, 5), np.float32), 5)
    with pytest.raises(UserError):
        knn_pairs(x, x, 0)
