"""First pass of the exact global search: a cheap matmul whose every score has a PROVEN error bound.

The exact score of a (query x, reference y) pair is the float32 distance
``D = max(0, fl(fl(|x|^2 + |y|^2) - 2 fl(x.y)))`` (`search.exact_distances`). Computing it for
all 50k x 1M pairs is the whole cost of the evaluation, and only ~N of them are kept. This
module finds, for a threshold tau, a small SUPERSET of the pairs with ``D <= tau`` without
computing any D; `search.py` then computes D for those candidates only.

The bound. Let delta = |x - y|^2 be the real (infinitely precise) squared distance of the two
float32 vectors (d dimensions, u = 2^-24 the unit roundoff, gamma_n = n u / (1 - n u)).

1. Any float32 evaluation of D (norms and inner product summed in any order, with or without
   FMA, BLAS or SIMD) satisfies ``|D - delta| <= gamma_{d+4} (|x| + |y|)^2`` (+ an underflow
   term, taken as (8d + 16) 2^-126 so that it holds even with flush-to-zero). (Higham, *Accuracy and Stability of Numerical Algorithms*,
   eq. 3.5: a computed dot product has error <= gamma_d sum |x_k y_k| <= gamma_d |x||y|;
   the norms likewise; the addition and subtraction add u each; clamping at 0 moves D
   towards delta >= 0.)
2. The first pass gives an approximation a of x.y with ``|x.y - a| <= E``:

   * ``int8``: x = s q + r_x (q integer in [-63, 63], one scale s per query), y = t p + r_y
     (p integer in [-127, 127], one scale t per segment of references); q.p is computed
     EXACTLY in int32 (onnxruntime MatMulInteger; 7-bit queries never saturate the AVX2
     u8 x s8 pair sums; a self-check refuses any kernel that is not exact), a = s t (q.p) and
     ``x.y - a = (s q).r_y + r_x.y``, so ``E = |s q| |r_y| + |r_x| |y|`` (Cauchy-Schwarz).
   * ``fp32``: a = the float32 matmul (onnxruntime/MLAS sgemm, or numpy's BLAS where
     onnxruntime is missing), ``E = gamma_d |x| |y|`` (any summation order, FMA or not).

3. Hence ``D >= |x|^2 + |y|^2 - 2 a - 2 E - gamma_{d+4} (|x| + |y|)^2 =: LB`` and a pair with
   ``LB > tau`` cannot have ``D <= tau``. Every pair with ``LB <= tau`` is a candidate.
   The bound quantities are evaluated in float64 with an explicit margin (1e-12 of tau and of
   (|x| + |y|)^2) that dominates float64's own rounding by four orders of magnitude.

Making it cheap: references are sorted by norm and cut into segments of 256; every matmul
call also returns the maximum of every (query, segment) run of 256 scores (computed inside
onnxruntime while the tile is in cache), which is compared with the bound evaluated at the
segment's extreme norms (one comparison per 256 pairs); only runs that pass are looked at
element by element. Each reference tile is a constant of its own single-threaded onnxruntime
session (packed once, not at every call); worker threads share the sessions (`run` is
thread-safe; no spinning thread pools), so two cores do two tiles at once.

Which first pass: ``int8`` where the CPU has int8 dot-product instructions (AVX-512 VNNI,
AVX-VNNI, AMX, Arm dot product: MLAS's MatMulInteger was measured at 4-5x the fp32 Gemm's
multiply-adds per CPU second on an AVX-512 VNNI Xeon, 1024 x 2048 x 256 tiles); ``fp32``
elsewhere. ``ISC_QK_SEARCH=int8|fp32|faiss`` forces one (search.py).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

SEG = 256  # references per segment: the coarse test looks at one maximum per run of SEG scores
TILE = 2048  # references per matmul call (a multiple of SEG)
ROWS = 1024  # queries per int8 matmul call (1024 x 2048 int32 = 8 MB: the fastest matmul + scan measured)
FP32_ROWS = 512  # queries per fp32 matmul call (measured 3% less CPU than 1024 for the whole fp32 search)
Q_LEVELS = 63  # queries: q in [-63, 63], stored as u8 q + 64 in [1, 127] (7 bits: no AVX2 saturation)
R_LEVELS = 127  # references: p in [-127, 127] (int8)
ZERO_POINT = 64
U32 = 2.0**-24
MARGIN = 1e-12  # float64 evaluation margin, relative to tau and to (|x| + |y|)^2
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni", "asimddp")


def gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u) for float32 (Higham's constant)."""
    return n * U32 / (1.0 - n * U32)


# ------------------------------------------------------------------------------------------
# CPU features and the choice of first pass


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 ``flags`` or Arm ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def has_int8_dot(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU has int8 dot-product instructions (VNNI, AMX, Arm dot product)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in INT8_FLAGS)


def preferred_kind(flags: frozenset[str] | None = None) -> str:
    """``int8`` on CPUs with int8 dot-product instructions, else ``fp32`` (the plain sgemm path:
    without those instructions int8 is not reliably faster, and the fp32 path is never slower
    than the exact fp32 search it replaces)."""
    return "int8" if has_int8_dot(flags) else "fp32"


# ------------------------------------------------------------------------------------------
# The two matmul kernels as one-node ONNX graphs (written here: `onnx` is not a dependency)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return _varint(num << 3) + _varint(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _value_info(name: str, elem: int, dims: list) -> bytes:
    shape = b"".join(_field(1, _field(2, v) if isinstance(v, str) else _field(1, v)) for v in dims)
    tensor_type = _field(1, elem) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor_type))


FLOAT, UINT8, INT8, INT32, INT64 = 1, 2, 3, 6, 7  # onnx.TensorProto element types


def _external_initializer(name: str, elem: int, dims: list[int]) -> bytes:
    """A TensorProto whose data the session options supply (`add_external_initializers`)."""
    location = _field(1, "location") + _field(2, "external")  # StringStringEntryProto
    return (b"".join(_field(1, v) for v in dims) + _field(2, elem) + _field(8, name)
            + _field(13, location) + _field(14, 1))  # data_location = EXTERNAL


def matmul_model(kind: str, d: int, n: int) -> bytes:
    """``int8``: Y[m, n] int32 = MatMulInteger(A u8 [m, d] (zero point 64), B int8 [d, n]);
    ``fp32``: Y[m, n] float = Gemm(A [m, d], B [n, d], transB=1); and in both
    M[m, n / SEG] = the maximum of every run of SEG values of a row of Y.

    B is a constant of the graph (an initializer whose data comes with the session options):
    onnxruntime then packs it once, when the session is built, instead of at every call
    (measured 10% less CPU per fp32 tile, 512 x 2048 x 256). The run maxima are computed in
    the same call while Y is still in cache (a third of the cost of numpy's max afterwards)."""
    if n % SEG:
        raise ValueError(f"a tile of {n} references is not a multiple of {SEG}")
    shape = _field(1, 3) + _field(2, INT64) + _field(8, "shape") + _field(9, np.array([0, -1, SEG], "<i8").tobytes())
    axes = _field(1, "axes") + _field(8, 2) + _field(20, 7)  # AttributeProto INTS [2]
    keepdims = _field(1, "keepdims") + _field(3, 0) + _field(20, 2)
    reshape = _field(1, "Y") + _field(1, "shape") + _field(2, "Y3") + _field(4, "Reshape")
    reduce = _field(1, "Y3") + _field(2, "M") + _field(4, "ReduceMax") + _field(5, axes) + _field(5, keepdims)
    tail = _field(1, reshape) + _field(1, reduce) + _field(5, shape)
    if kind == "int8":
        zp = _field(2, UINT8) + _field(8, "za") + _field(9, bytes([ZERO_POINT]))  # scalar initializer
        node = _field(1, "A") + _field(1, "B") + _field(1, "za") + _field(2, "Y") + _field(4, "MatMulInteger")
        graph = _field(1, node) + _field(2, "g") + _field(5, zp) + _field(5, _external_initializer("B", INT8, [d, n])) + tail
        a_type, out_type = UINT8, INT32
    elif kind == "fp32":
        trans_b = _field(1, "transB") + _field(3, 1) + _field(20, 2)  # AttributeProto INT
        node = _field(1, "A") + _field(1, "B") + _field(2, "Y") + _field(4, "Gemm") + _field(5, trans_b)
        graph = _field(1, node) + _field(2, "g") + _field(5, _external_initializer("B", FLOAT, [n, d])) + tail
        a_type, out_type = FLOAT, FLOAT
    else:
        raise ValueError(kind)
    graph += _field(11, _value_info("A", a_type, ["m", d]))
    graph += _field(12, _value_info("Y", out_type, ["m", n]))
    graph += _field(12, _value_info("M", out_type, ["m", n // SEG]))
    return _field(1, 7) + _field(7, graph) + _field(8, _field(2, 13))  # IR 7, opset 13


class MatmulKernel:
    """onnxruntime matmuls against fixed reference tiles: one single-threaded session per
    tile, shared by many threads (`run` is thread-safe)."""

    name = "onnxruntime"
    parallel = True  # threads may share the sessions

    def __init__(self, kind: str, d: int) -> None:
        import onnxruntime as ort

        self.kind, self.d = kind, d
        self.out_dtype = np.int32 if kind == "int8" else np.float32
        self.ort = ort

    def tile(self, b: np.ndarray):
        """The session of one reference tile (`b`: int8 [d, n] or float32 [n, d]; keep it alive
        as long as the session: onnxruntime's contract for external initializers)."""
        ort = self.ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = False  # the only buffers are the packed B and our outputs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_external_initializers(["B"], [ort.OrtValue.ortvalue_from_numpy(b)])
        n = b.shape[1] if self.kind == "int8" else b.shape[0]
        return ort.InferenceSession(matmul_model(self.kind, self.d, n), opts, providers=["CPUExecutionProvider"])

    def __call__(self, a: np.ndarray, session, out: np.ndarray, top: np.ndarray) -> None:
        """out = the matmul of `a` and the tile; top = the maxima of its runs of SEG."""
        io = session.io_binding()
        io.bind_cpu_input("A", a)
        io.bind_output("Y", "cpu", 0, self.out_dtype, list(out.shape), out.ctypes.data)
        io.bind_output("M", "cpu", 0, self.out_dtype, list(top.shape), top.ctypes.data)
        session.run_with_iobinding(io)


class NumpyKernel:
    """The fp32 matmul through numpy's BLAS: the fallback where onnxruntime is missing.

    Used from one thread (BLAS has its own threads), hence `parallel = False`."""

    name = "numpy"
    parallel = False

    def __init__(self, d: int) -> None:
        self.kind, self.d, self.out_dtype = "fp32", d, np.float32

    def tile(self, b: np.ndarray) -> np.ndarray:
        return b

    def __call__(self, a: np.ndarray, b_value: np.ndarray, out: np.ndarray, top: np.ndarray) -> None:
        np.matmul(a, b_value.T, out=out)
        out.reshape(len(out), -1, SEG).max(axis=2, out=top)


def _int8_kernel_is_exact(kernel: MatmulKernel) -> bool:
    """The extreme 7-bit x 8-bit products must come back exact (a saturating kernel fails)."""
    d = kernel.d
    rng = np.random.default_rng(0)
    a = rng.choice(np.array([1, 127, 64, 100], np.uint8), (37, d))
    a[0], a[1] = 127, 1
    b = rng.choice(np.array([-127, 127, 0, -1], np.int8), (d, 2 * SEG))
    b[:, 0], b[:, 1] = 127, -127
    out, top = np.empty((37, 2 * SEG), np.int32), np.empty((37, 2), np.int32)
    kernel(a, kernel.tile(b), out, top)
    exact = (a.astype(np.int64) - ZERO_POINT) @ b.astype(np.int64)
    return bool(np.array_equal(out, exact) and np.array_equal(top, exact.reshape(37, 2, SEG).max(axis=2)))


def _fp32_kernel_within_bound(kernel: MatmulKernel | NumpyKernel) -> bool:
    """The float32 matmul must be a float32 matmul (no reduced-precision fast math)."""
    d = kernel.d
    rng = np.random.default_rng(1)
    a = rng.standard_normal((33, d)).astype(np.float32)
    b = rng.standard_normal((2 * SEG, d)).astype(np.float32)
    out, top = np.empty((33, 2 * SEG), np.float32), np.empty((33, 2), np.float32)
    kernel(a, kernel.tile(b), out, top)
    exact = a.astype(np.float64) @ b.astype(np.float64).T
    bound = gamma(d) * np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return bool(np.all(np.abs(out - exact) <= bound) and np.array_equal(top, out.reshape(33, 2, SEG).max(axis=2)))


_KERNELS: dict[tuple[str, int], MatmulKernel | NumpyKernel | None] = {}
_KERNELS_LOCK = threading.Lock()


def _checked(kind: str, d: int) -> MatmulKernel | NumpyKernel | None:
    try:
        k = MatmulKernel(kind, d)
        ok = _int8_kernel_is_exact(k) if kind == "int8" else _fp32_kernel_within_bound(k)
    except Exception:  # no onnxruntime, or it refuses the graph
        k, ok = None, False
    if not ok and kind == "fp32":
        k = NumpyKernel(d)
        ok = _fp32_kernel_within_bound(k)
    return k if ok else None


def kernel_for(kind: str, d: int) -> MatmulKernel | NumpyKernel | None:
    """The checked kernel, or None (int8 without onnxruntime, or a kernel that fails its check)."""
    with _KERNELS_LOCK:
        if (kind, d) not in _KERNELS:
            _KERNELS[(kind, d)] = _checked(kind, d)
        return _KERNELS[(kind, d)]


# ------------------------------------------------------------------------------------------
# Reference side (prepared once) and query side (per batch)


def _norms64(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Euclidean norms in float64 (exact to ~1e-16), in chunks: no float64 copy of all of x."""
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        x64 = x[i : i + chunk].astype(np.float64)
        out[i : i + chunk] = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    return out


@dataclass
class References:
    """The references sorted by norm, in tiles, with per-reference and per-segment bound terms.

    Bound terms (length n_pad, sorted order; padding: beta = +inf, which fails every test):
    beta = (1 - g) |y|^2, b1 = |r_y| (int8) or 0, b2 = |y|, tscale = t (int8) or 1.
    """

    kind: str
    d: int
    n: int
    order: np.ndarray  # sorted position -> reference row
    beta: np.ndarray
    b1: np.ndarray
    b2: np.ndarray
    tscale: np.ndarray
    seg_beta_min: np.ndarray
    seg_b1_max: np.ndarray
    seg_b2_max: np.ndarray
    seg_t: np.ndarray
    tiles: list = field(repr=False)  # one per tile: a kernel's session (or the array itself)
    keep_alive: list = field(repr=False)

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)


def _gp(d: int) -> float:
    return gamma(d + 4) + 4 * MARGIN


def prepare_references(xb: np.ndarray, kind: str, kernel: MatmulKernel) -> References:
    nb, d = xb.shape
    gp = _gp(d)
    norms = _norms64(xb)
    order = np.argsort(norms, kind="stable")
    n_tiles = -(-nb // TILE)
    n_pad = n_tiles * TILE
    beta = np.full(n_pad, np.inf)
    b1, b2, tscale = np.zeros(n_pad), np.zeros(n_pad), np.ones(n_pad)
    beta[:nb] = (1 - gp) * norms[order] ** 2
    b2[:nb] = norms[order]
    n_seg = n_pad // SEG
    seg_t = np.ones(n_seg)
    tiles, keep = [], []
    for k in range(n_tiles):
        lo, hi = k * TILE, min(nb, (k + 1) * TILE)
        y = xb[order[lo:hi]]
        if kind == "fp32":
            tile = np.zeros((TILE, d), np.float32)
            tile[: hi - lo] = y
        else:
            y64 = np.zeros((TILE, d))
            y64[: hi - lo] = y
            seg = np.abs(y64).reshape(TILE // SEG, SEG * d).max(axis=1) / R_LEVELS
            seg[seg == 0] = 1.0
            t = np.repeat(seg, SEG)
            p = np.clip(np.rint(y64 / t[:, None]), -R_LEVELS, R_LEVELS)
            r = y64 - p * t[:, None]
            b1[lo : lo + TILE] = np.sqrt(np.einsum("ij,ij->i", r, r))
            tscale[lo : lo + TILE] = t
            seg_t[k * (TILE // SEG) : (k + 1) * (TILE // SEG)] = seg
            tile = np.ascontiguousarray(p.astype(np.int8).T)  # (d, TILE)
        keep.append(tile)
        tiles.append(kernel.tile(tile))
    b1[nb:] = 0.0
    return References(
        kind=kind, d=d, n=nb, order=order, beta=beta, b1=b1, b2=b2, tscale=tscale,
        seg_beta_min=beta.reshape(n_seg, SEG).min(axis=1),
        seg_b1_max=b1.reshape(n_seg, SEG).max(axis=1),
        seg_b2_max=b2.reshape(n_seg, SEG).max(axis=1),
        seg_t=seg_t, tiles=tiles, keep_alive=keep,
    )


@dataclass
class Queries:
    """One batch of queries: the matmul operand and the per-query bound terms.

    With tau: R_ij = alpha_i(tau) + beta_j - 2 a1_i b1_j - 2 a2_i b2_j, and the pair is a
    candidate iff 2 c_i t_j Y_ij >= R_ij (Y = the matmul output).
    """

    operand: np.ndarray
    xn: np.ndarray  # (1 - g) |x|^2
    a1: np.ndarray
    a2: np.ndarray
    c: np.ndarray
    eta: float  # the underflow term

    def alpha(self, tau: float) -> np.ndarray:
        return self.xn - tau * (1 + MARGIN) - self.eta


def prepare_queries(xq: np.ndarray, kind: str) -> Queries:
    n, d = xq.shape
    gp = _gp(d)
    norms = _norms64(xq)
    eta = (8 * d + 16) * 2.0**-126  # underflow, even with flush-to-zero
    if kind == "fp32":
        ge = gamma(d) + 4 * MARGIN
        return Queries(operand=np.ascontiguousarray(xq, np.float32), xn=(1 - gp) * norms**2,
                       a1=np.zeros(n), a2=(gp + ge) * norms, c=np.ones(n), eta=eta)
    x64 = xq.astype(np.float64)
    s = np.abs(x64).max(axis=1) / Q_LEVELS
    s[s == 0] = 1.0
    q = np.clip(np.rint(x64 / s[:, None]), -Q_LEVELS, Q_LEVELS)
    xhat = q * s[:, None]
    r = x64 - xhat
    return Queries(
        operand=(q + ZERO_POINT).astype(np.uint8),
        xn=(1 - gp) * norms**2,
        a1=np.sqrt(np.einsum("ij,ij->i", xhat, xhat)),
        a2=np.sqrt(np.einsum("ij,ij->i", r, r)) + gp * norms,
        c=s,
        eta=eta,
    )


# ------------------------------------------------------------------------------------------
# The scan


class Scanner:
    """Candidates (query row, reference row) with LB <= tau for a batch, on `threads` threads."""

    def __init__(self, xb: np.ndarray, kind: str, threads: int) -> None:
        kernel = kernel_for(kind, xb.shape[1])
        if kernel is None:
            raise RuntimeError(f"the {kind} first pass is not available")
        self.kind, self.kernel, self.threads = kind, kernel, max(1, threads)
        self.rows = FP32_ROWS if kind == "fp32" else ROWS
        self.refs = prepare_references(xb, kind, kernel)
        self.local = threading.local()
        parallel = self.threads > 1 and getattr(kernel, "parallel", True)
        self.pool = ThreadPoolExecutor(self.threads) if parallel else None
        self.n_coarse = 0  # (query, segment) runs that passed the coarse test
        self.n_runs = 0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """This thread's matmul output (rows, TILE) and run maxima (rows, TILE / SEG)."""
        bufs = getattr(self.local, "bufs", None)
        if bufs is None:
            dtype = self.kernel.out_dtype
            bufs = self.local.bufs = (np.empty(self.rows * TILE, dtype), np.empty(self.rows * TILE // SEG, dtype))
        return bufs[0][: rows * TILE].reshape(rows, TILE), bufs[1][: rows * TILE // SEG].reshape(rows, TILE // SEG)

    def _coarse_thresholds(self, alpha: np.ndarray, a1: np.ndarray, a2: np.ndarray, c2: np.ndarray) -> np.ndarray:
        """h[tile, query, segment of the tile]: a run of the matmul output can hold a candidate
        only if its maximum is >= h, with h = (alpha + beta_min - 2 a1 b1_max - 2 a2 b2_max) / (2 c t)
        at the segment's extreme terms (float64, in place: no temporaries), then as the matmul's
        own type and never stricter: int32 ceil(h) (exact for integer scores; clipped, no int8
        score reaches 2^31 - 1), float32 h rounded and moved one step towards -inf."""
        refs, spt = self.refs, TILE // SEG
        seg = lambda v: v.reshape(refs.n_tiles, 1, spt)  # noqa: E731
        col = lambda v: v.reshape(1, len(v), 1)  # noqa: E731
        h = np.multiply(col(-2 * a2), seg(refs.seg_b2_max))
        h += col(alpha)
        h += seg(refs.seg_beta_min)
        if self.kind == "int8":
            h -= col(2 * a1) * seg(refs.seg_b1_max)
            h /= col(c2) * seg(refs.seg_t)
            np.ceil(h, out=h)
            np.clip(h, -(2.0**31), 2.0**31 - 1, out=h)
            return h.astype(np.int32)
        h /= 2  # fp32: a1 = 0, c = t = 1
        t = h.astype(np.float32)
        return np.nextafter(t, np.float32(-np.inf), out=t)

    def _block(self, qs: Queries, alpha_all: np.ndarray, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Candidates of queries r0:r1 (`alpha_all`: `qs.alpha(tau)` of the whole batch)."""
        refs = self.refs
        spt = TILE // SEG
        n = r1 - r0
        a = qs.operand[r0:r1]
        alpha, a1, a2, c2 = alpha_all[r0:r1], qs.a1[r0:r1], qs.a2[r0:r1], 2 * qs.c[r0:r1]
        h_all = self._coarse_thresholds(alpha, a1, a2, c2)
        y, top = self._buffers(n)
        runs_all = y.reshape(n * spt, SEG)
        out_i, out_j = [], []
        coarse = 0
        for k in range(refs.n_tiles):
            self.kernel(a, refs.tiles[k], y, top)
            h = h_all[k].reshape(n * spt)
            run = np.flatnonzero(top.reshape(n * spt) >= h)  # run = row * spt + segment
            if not len(run):
                continue
            coarse += len(run)
            runs = np.take(runs_all, run, axis=0)
            hit = np.flatnonzero(runs >= np.take(h, run)[:, None])  # hit = passing run * SEG + element
            if not len(hit):
                continue
            run_of = run[hit // SEG]
            i = run_of // spt
            j = k * TILE + (run_of % spt) * SEG + hit % SEG
            yv = np.take(runs, hit).astype(np.float64)
            # the exact bound test of each pair (float64, as derived in the module docstring)
            rij = alpha[i] + refs.beta[j] - 2 * a1[i] * refs.b1[j] - 2 * a2[i] * refs.b2[j]
            keep = c2[i] * refs.tscale[j] * yv >= rij
            out_i.append(i[keep] + r0)
            out_j.append(j[keep])
        if not out_i:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), coarse
        return np.concatenate(out_i), np.concatenate(out_j), coarse

    def candidates(self, xq: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """(query row in xq, reference row) of every pair whose lower bound is <= tau."""
        qs = prepare_queries(xq, self.kind)
        alpha = qs.alpha(tau)
        blocks = [(r0, min(len(xq), r0 + self.rows)) for r0 in range(0, len(xq), self.rows)]
        if self.pool is None:
            parts = [self._block(qs, alpha, r0, r1) for r0, r1 in blocks]
        else:
            parts = list(self.pool.map(lambda b: self._block(qs, alpha, b[0], b[1]), blocks))
        self.n_coarse += sum(p[2] for p in parts)
        self.n_runs += len(xq) * self.refs.n_tiles * (TILE // SEG)
        qi = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        rj = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        return qi.astype(np.int64), self.refs.order[rj].astype(np.int64)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


__all__ = ["Scanner", "cpu_flags", "has_int8_dot", "preferred_kind", "kernel_for", "gamma", "matmul_model",
           "prepare_queries", "prepare_references", "default_threads"]
