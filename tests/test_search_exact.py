"""The bounded search (int8 / fp32 first pass + exact re-scoring) equals brute force exactly.

"Exactly" means the same pairs, the same float32 scores and the same order (ties broken by
(query row, reference row)) as sorting ALL pairs by `exact_distances`, on data built to break
a first pass with a loose or wrong error bound: exact ties at the cut, scores 1 ulp apart,
duplicated rows, huge / tiny / zero vectors, spiky vectors that int8 quantises badly, one
query, n above the number of pairs, dimensions that are not multiples of 8.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from isc_qk.evaluation import prefilter, search
from isc_qk.evaluation.search import Pairs, SearchStats, exact_distances, global_top_pairs

HAS_ORT = prefilter.kernel_for("int8", 16) is not None
METHODS = ["fp32", "auto", pytest.param("int8", marks=pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime"))]


def brute_force(xq: np.ndarray, xb: np.ndarray, n: int) -> Pairs:
    """Every pair's exact score, sorted by (score, query row, reference row), first n."""
    qi = np.repeat(np.arange(len(xq), dtype=np.int64), len(xb))
    ri = np.tile(np.arange(len(xb), dtype=np.int64), len(xq))
    d = exact_distances(xq, xb, qi, ri)
    order = np.lexsort((ri, qi, d))[:n]
    return Pairs(qi[order], ri[order], d[order])


def assert_identical(got: Pairs, want: Pairs) -> None:
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.query, want.query)
    np.testing.assert_array_equal(got.reference, want.reference)
    assert got.distance.dtype == np.float32
    np.testing.assert_array_equal(got.distance.view(np.int32), want.distance.view(np.int32))


# ------------------------------------------------------------------------------------------
# adversarial data


def dyadic_ties(rng):
    """Values in {-1, -0.75, ..., 1}, d = 6: thousands of exactly tied scores at the cut."""
    f = lambda n: (rng.integers(0, 9, (n, 6)) / 4.0 - 1.0).astype(np.float32)  # noqa: E731
    return f(400), f(300), 3000


def ulp_near_ties(rng):
    """Queries within 1e-7 of the origin and references on the sphere of radius 0.1 around it:
    the 135,000 scores of those pairs lie within a few dozen ulps of 0.01, with exact ties
    and 1-ulp gaps, and the cut falls among them. Plus Gaussian queries with 6 references
    each at distance 0.1 (scores quantised by cancellation: more ties near the cut)."""
    d = 13

    def sphere(n: int, r: float) -> np.ndarray:
        u = rng.standard_normal((n, d))
        return r * u / np.linalg.norm(u, axis=1, keepdims=True)

    near_q = sphere(150, 1e-7)
    near_b = sphere(900, 0.1)
    far_q = rng.standard_normal((150, d)) + 5.0
    far_b = (far_q[:, None, :] + sphere(900, 0.1).reshape(150, 6, d)).reshape(-1, d)
    xq = np.concatenate([near_q, far_q]).astype(np.float32)
    xb = np.concatenate([near_b, far_b]).astype(np.float32)
    return xq[rng.permutation(len(xq))], xb[rng.permutation(len(xb))], 20000


def duplicates(rng):
    """Every reference three times, every query twice: each score tied several ways."""
    d = 11
    xb = np.repeat(rng.standard_normal((150, d)).astype(np.float32), 3, axis=0)
    xq = np.repeat(rng.standard_normal((200, d)).astype(np.float32), 2, axis=0)
    xq[:100:2] = xb[:450:9]  # some queries equal to references: score 0
    return xq, xb, 2000


def extreme_norms(rng):
    """Unit, huge (1e12), tiny (1e-12, 1e-25) and zero vectors mixed, d = 7."""
    d = 7
    xb = rng.standard_normal((400, d)).astype(np.float32)
    xq = rng.standard_normal((350, d)).astype(np.float32)
    for x in (xb, xq):
        x[0::5] *= 1e12
        x[1::5] *= 1e-12
        x[2::11] *= 1e-25
        x[3::13] = 0.0
    xb[50:60] = xb[0]  # duplicated huge references
    xq[10] = xb[0]
    return xq, xb, 2500


def spiky(rng):
    """One huge coordinate per vector (int8 quantises the rest to 0), d = 17."""
    d = 17
    xb = 0.01 * rng.standard_normal((500, d)).astype(np.float32)
    xq = 0.01 * rng.standard_normal((300, d)).astype(np.float32)
    xb[np.arange(500), rng.integers(0, d, 500)] = rng.choice([-50.0, 50.0], 500)
    xq[np.arange(300), rng.integers(0, d, 300)] = rng.choice([-50.0, 50.0], 300)
    return xq, xb, 3000


def gaussian_with_copies(rng):
    """The benchmark's kind of data, d = 257: noisy copies among random vectors."""
    d = 257
    xb = rng.standard_normal((900, d)).astype(np.float32)
    xq = rng.standard_normal((450, d)).astype(np.float32)
    xq[:100] = xb[:100] + 0.3 * rng.standard_normal((100, d)).astype(np.float32)
    return xq, xb, 4500


def one_query(rng):
    xb = rng.standard_normal((3000, 9)).astype(np.float32)
    return xb[:1] + 0.1, xb, 100


def more_than_all_pairs(rng):
    return rng.standard_normal((20, 5)).astype(np.float32), rng.standard_normal((30, 5)).astype(np.float32), 1000


CASES = [dyadic_ties, ulp_near_ties, duplicates, extreme_norms, spiky, gaussian_with_copies, one_query,
         more_than_all_pairs]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", METHODS)
def test_identical_to_brute_force(case, method):
    xq, xb, n = case(np.random.default_rng(12))
    stats = SearchStats()
    got = global_top_pairs(xq, xb, n, method=method, stats=stats)
    assert_identical(got, brute_force(xq, xb, n))
    assert stats.method in ("int8", "fp32")


def test_adversarial_data_is_adversarial():
    """The near-tie and tie cases really put 1-ulp gaps and exact ties at the cut."""
    xq, xb, n = ulp_near_ties(np.random.default_rng(12))
    top = brute_force(xq, xb, 2 * n).distance
    values = np.unique(top)
    at = np.searchsorted(values, top[n - 1])
    assert np.all(np.diff(values[at - 3 : at + 4].view(np.int32)) == 1)  # 1-ulp steps at the cut
    assert top[n] == top[n - 1]
    xq, xb, n = dyadic_ties(np.random.default_rng(12))
    top = brute_force(xq, xb, n + 1).distance
    assert (top == top[n - 1]).sum() > 50 and top[n] == top[n - 1]


def test_the_first_pass_prunes():
    """The cases above go through the first pass and discard most pairs (not all-pairs)."""
    xq, xb, n = gaussian_with_copies(np.random.default_rng(12))
    stats = SearchStats()
    global_top_pairs(xq, xb, n, stats=stats)
    assert stats.runs > 0 and stats.candidates < 0.3 * len(xq) * len(xb)


@pytest.mark.parametrize("kind", ["fp32", pytest.param("int8", marks=pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime"))])
@pytest.mark.parametrize("case", [extreme_norms, spiky, ulp_near_ties], ids=lambda c: c.__name__)
def test_candidates_contain_every_pair_within_tau(kind, case):
    """The bound itself: for several tau, every pair with exact score <= tau is a candidate."""
    xq, xb, _ = case(np.random.default_rng(3))
    qi = np.repeat(np.arange(len(xq)), len(xb))
    ri = np.tile(np.arange(len(xb)), len(xq))
    d = exact_distances(xq, xb, qi, ri)
    scanner = prefilter.Scanner(xb, kind, threads=2)
    try:
        for quantile in (1e-4, 1e-3, 1e-2, 0.2):
            tau = float(np.quantile(d, quantile))
            cq, cr = scanner.candidates(xq, tau)
            found = set(zip(cq.tolist(), cr.tolist()))
            must = d <= tau
            assert set(zip(qi[must].tolist(), ri[must].tolist())) <= found
    finally:
        scanner.close()


def test_a_wrong_estimate_is_searched_again(monkeypatch):
    """An estimated cut far too low makes batches miss pairs; the final check redoes them."""
    monkeypatch.setattr(search, "ESTIMATE_SAFETY", 0.01)
    xq, xb, n = gaussian_with_copies(np.random.default_rng(5))
    stats = SearchStats()
    got = global_top_pairs(xq, xb, n, stats=stats)
    assert stats.redone > 0
    assert_identical(got, brute_force(xq, xb, n))


def test_without_onnxruntime_falls_back_to_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    monkeypatch.setattr(prefilter, "_KERNELS", {})
    xq, xb, n = duplicates(np.random.default_rng(1))
    stats = SearchStats()
    got = global_top_pairs(xq, xb, n, method="int8", stats=stats)
    assert (stats.method, stats.kernel) == ("fp32", "numpy") and "not available" in stats.note
    assert_identical(got, brute_force(xq, xb, n))


def test_independent_of_threads_and_query_order():
    xq, xb, n = gaussian_with_copies(np.random.default_rng(2))
    one = global_top_pairs(xq, xb, n, threads=1)
    two = global_top_pairs(xq, xb, n, threads=2)
    assert_identical(one, two)
    perm = np.random.default_rng(0).permutation(len(xq))[::-1].copy()
    shuffled = global_top_pairs(xq[perm], xb, n)
    back = perm[shuffled.query]
    order = np.lexsort((shuffled.reference, back, shuffled.distance))
    assert_identical(Pairs(back[order], shuffled.reference[order], shuffled.distance[order]), one)


def test_faiss_method_still_works_and_agrees_up_to_rounding():
    xq, xb, n = gaussian_with_copies(np.random.default_rng(4))
    stats = SearchStats()
    got = global_top_pairs(xq, xb, n, method="faiss", stats=stats)
    want = brute_force(xq, xb, n)
    assert stats.method == "faiss" and len(got) == n
    np.testing.assert_allclose(got.distance, want.distance, rtol=1e-4, atol=1e-3)
    assert len(set(zip(got.query.tolist(), got.reference.tolist())) ^ set(zip(want.query.tolist(),
                                                                             want.reference.tolist()))) < 0.01 * n


def test_method_from_environment(monkeypatch):
    monkeypatch.setenv(search.METHOD_ENV, "fp32")
    assert search.resolve_method() == "fp32"
    monkeypatch.setenv(search.METHOD_ENV, "bogus")
    with pytest.raises(search.UserError, match="search method"):
        search.resolve_method()


def test_cpu_choice():
    assert prefilter.preferred_kind(frozenset({"avx2", "avx512_vnni"})) == "int8"
    assert prefilter.preferred_kind(frozenset({"asimd", "asimddp"})) == "int8"
    assert prefilter.preferred_kind(frozenset({"avx2", "fma"})) == "fp32"
    assert prefilter.preferred_kind(frozenset()) == "fp32"


@pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime")
def test_int8_matmul_is_exact_at_the_extremes():
    kernel = prefilter.kernel_for("int8", 37)
    assert kernel is not None and prefilter._int8_kernel_is_exact(kernel)


@pytest.mark.parametrize("kind", ["fp32", pytest.param("int8", marks=pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime"))])
def test_matmul_call_returns_the_maxima_of_its_runs(kind):
    """One call gives the tile's scores and the maximum of every run of SEG of them (all-negative
    runs included), from a session whose reference tile is packed once."""
    d, rows = 48, 37
    rng = np.random.default_rng(7)
    kernel = prefilter.kernel_for(kind, d)
    if kind == "fp32":
        a = rng.standard_normal((rows, d)).astype(np.float32)
        b = rng.standard_normal((prefilter.TILE, d)).astype(np.float32)
        b[: prefilter.SEG] = -np.abs(b[: prefilter.SEG])
        a[:5] = np.abs(a[:5])  # rows 0-4: a run of negative scores only
        want = a.astype(np.float64) @ b.astype(np.float64).T
    else:
        a = rng.integers(1, 128, (rows, d)).astype(np.uint8)
        b = rng.integers(-127, 128, (d, prefilter.TILE)).astype(np.int8)
        want = (a.astype(np.int64) - prefilter.ZERO_POINT) @ b.astype(np.int64)
    out = np.empty((rows, prefilter.TILE), kernel.out_dtype)
    top = np.empty((rows, prefilter.TILE // prefilter.SEG), kernel.out_dtype)
    tile = kernel.tile(b)
    for _ in range(2):  # the same session again: nothing left over from the first call
        kernel(a, tile, out, top)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-3)
        assert np.array_equal(top, out.reshape(rows, -1, prefilter.SEG).max(axis=2))
    if kind == "fp32":
        assert (top[:5, 0] < 0).all()


@pytest.mark.parametrize("kind", ["fp32", pytest.param("int8", marks=pytest.mark.skipif(not HAS_ORT, reason="no onnxruntime"))])
def test_coarse_thresholds_are_never_stricter_than_the_bound(kind):
    """The float64 thresholds h, converted to the matmul's type, let every score >= h pass."""
    rng = np.random.default_rng(8)
    nb = 3 * prefilter.TILE - prefilter.SEG - 44  # a padded last tile: one segment of padding only
    xb = (rng.standard_normal((nb, 32)) * rng.uniform(0.1, 10, (nb, 1))).astype(np.float32)
    xq = rng.standard_normal((50, 32)).astype(np.float32)
    scanner = prefilter.Scanner(xb, kind, threads=1)
    try:
        qs = prefilter.prepare_queries(xq, kind)
        for tau in (0.0, 1.0, 37.5, 1e4):
            alpha = qs.alpha(tau)
            got = scanner._coarse_thresholds(alpha, qs.a1, qs.a2, 2 * qs.c)
            refs = scanner.refs
            h = (alpha[:, None] + refs.seg_beta_min - 2 * qs.a1[:, None] * refs.seg_b1_max
                 - 2 * qs.a2[:, None] * refs.seg_b2_max) / (2 * qs.c[:, None] * refs.seg_t)
            h = h.reshape(len(xq), refs.n_tiles, -1).transpose(1, 0, 2)
            assert got.dtype == scanner.kernel.out_dtype and got.shape == h.shape
            finite = np.isfinite(h)
            assert not finite.all()
            if kind == "fp32":  # a float32 y >= h is >= t: t <= h, and t is within 2 ulps of h
                assert (got.astype(np.float64) <= h).all()
                assert np.allclose(got[finite], h[finite], rtol=3e-7, atol=1e-30)
            else:  # an integer y >= h iff y >= ceil(h)
                assert np.array_equal(got[finite], np.ceil(h[finite]).astype(np.int32))
                assert (got[~finite] == 2**31 - 1).all()  # padding segments: nothing passes
    finally:
        scanner.close()


def test_matmul_tiles_are_whole_segments():
    with pytest.raises(ValueError, match="multiple"):
        prefilter.matmul_model("fp32", 8, prefilter.SEG + 1)
