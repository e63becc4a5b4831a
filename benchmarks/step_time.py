"""Seconds per QK training step and peak memory as the key table grows (T = 10k, 100k, 1M).

``--shape sscd`` (the SSCD recipe: frozen ONNX features 512 + start 256 = 768-wide float16 table,
linear head 768 -> 256 with L2 output, the other head frozen, B = 32, M = 10), per T, each in a
fresh subprocess:

* ``cached``: the step as train-q/train-k run it now (`qk.loss.cached_qk_loss`): the other
  side's descriptors of every row computed once per phase (`qk.cached_side`, timed apart as
  "cache build"), mined on the device (`qk.mining.KeyTable`), loss + gradients of the
  trainable head. Alternates with the FLOOR in the same process: the bare B x 256 x T float32
  distance matmul over the same cached table (NumPy, as in the issue; TensorFlow's too).
* ``cached-fp32``: the same with ``--first-pass none`` (the float32 pass alone), where
  ``cached`` (``--first-pass auto``) uses the exact int8 first pass (`qk.first_pass`).
* ``old``: the path before (`qk.loss.qk_loss`): the frozen head re-run over the whole 768-wide
  table every step. Alternates with the same floor (its own float32 T x 256 table).
* peak memory of the steps alone (VmHWM reset before each step, read after it).

    python benchmarks/step_time.py --shape sscd [--sizes 10000,100000,1000000] [--json ...]

The default shape (Lite0 head 1536 -> 1024 -> 256, the head trains) is the original benchmark:

Three ways to compute the negatives part of one step (B batch descriptors against the head
applied to all T table rows, then loss + gradients for the batch and the head):

* ``ours``:  `isc_qk.loss.qk_loss` -- no-grad chunked mining, then the head re-run with
  gradient on the selected rows only.
* ``naive``: `naive_qk_loss` -- the head over the whole table under autograd. Skipped where
  its memory, extrapolated from the smaller T, would exceed ``--naive-max-gb`` (the machine
  is shared: letting it really run out of memory would hurt everybody on it).
* ``floor``: a bare chunked forward of the same head over the table, nothing else: no
  method that looks at every row can be faster.

The backbone part (forward + backward of the backbone and head for B images) does not depend
on T and is measured once. The table is random float16 (backbone-like features in [0, 2)
plus GIST-like values) of width feature_dim + 256.

Every (method, T) point runs in a fresh subprocess, so its peak memory (VmHWM, reset after
the table is built and the kernels are traced) is its own. Results print as a table and are
written as JSON.

    python benchmarks/step_time.py [--sizes 10000,100000,1000000] [--batch 32] [--m 10]
        [--backbone efficientnet-lite0] [--chunk 8192] [--sweep-chunks 4096,8192,16384,65536] [--json benchmarks/results/step_time.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

GIST_DIM = 256


# ----------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so later peaks are this phase's own."""
    Path("/proc/self/clear_refs").write_text("5")


# ----------------------------------------------------------------------------- one point
def make_table(n: int, width: int, seed: int = 0) -> np.ndarray:
    """Random float16 table, built in blocks so no float64/float32 copy of it ever exists."""
    rng = np.random.default_rng(seed)
    table = np.empty((n, width), np.float16)
    feat = width - GIST_DIM
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        table[s:e, :feat] = rng.uniform(0, 2, size=(e - s, feat)).astype(np.float32)
        table[s:e, feat:] = rng.normal(scale=0.06, size=(e - s, GIST_DIM)).astype(np.float32)
    return table


SSCD_FEAT, SSCD_DIM = 512, 256


def make_sscd_table(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """SSCD-like float16 head inputs on disk, memory-mapped: L2-normalised 512-d features and
    L2-normalised 256-d start vectors, rows near cluster centres (hard negatives exist)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1024, SSCD_FEAT + SSCD_DIM)).astype(np.float32)
    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, SSCD_FEAT + SSCD_DIM))
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        x = centres[rng.integers(0, len(centres), e - s)] + rng.normal(scale=1.5, size=(e - s, SSCD_FEAT + SSCD_DIM))
        for a, b in ((0, SSCD_FEAT), (SSCD_FEAT, SSCD_FEAT + SSCD_DIM)):
            x[:, a:b] /= np.linalg.norm(x[:, a:b], axis=1, keepdims=True)
        table[s:e] = x
    table.flush()
    return np.load(path, mmap_mode="r")


def sscd_head(seed: int):
    """A linear head 768 -> 256 with L2 output (the SSCD recipe), weights as if trained a while."""
    from isc_qk.configs import ModelConfig
    from isc_qk.models.heads import build_head

    head = build_head(SSCD_FEAT, ModelConfig(head_hidden=0, dim=SSCD_DIM, residual_scale=1.0, output_l2=True), seed=seed)
    rng = np.random.default_rng(seed)
    for v in head.weights:
        v.assign(rng.normal(scale=0.02, size=v.shape).astype(np.float32))
    return head


def run_sscd_point(method: str, n: int, args) -> dict:
    """One SSCD-shape point (module docstring): the cached or the old step, paired with the floor."""
    import shutil
    import tempfile

    import tensorflow as tf

    from isc_qk.configs import LossConfig
    from isc_qk.formats.feature_table import write_ids
    from isc_qk.qk.cached_side import cached_side, open_cached_side
    from isc_qk.qk.loss import cached_qk_loss, qk_loss
    from isc_qk.qk.mining import KeyTable, aligned_empty

    b, lcfg = args.batch, LossConfig(m=args.m, tau=2.0)
    tmp = Path(tempfile.mkdtemp(prefix="wt20-step-", dir=args.tmp))
    try:
        table = make_sscd_table(tmp / "feats.npy", n)
        rng = np.random.default_rng(1)
        pos_rows = rng.choice(n, size=b, replace=False)
        x = tf.constant(np.asarray(table[np.sort(pos_rows)], np.float32)
                        + rng.normal(scale=0.02, size=(b, SSCD_FEAT + SSCD_DIM)).astype(np.float32))
        pairs = np.stack([np.arange(b), np.sort(pos_rows)], 1)
        k_head, q_head = sscd_head(1), sscd_head(2)
        variables = q_head.trainable_variables
        info: dict = {}
        release = None
        if method.startswith("cached"):
            write_ids(tmp / "feats.ids.txt", [str(i) for i in range(n)])
            t0 = time.perf_counter()
            prefix = cached_side(k_head, "k", table, tmp / "feats", tmp / "cache", progress=False)
            info["cache_build_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            first = {"cached": args.first_pass, "cached-fp32": "none", "cached-int8": "int8"}[method]
            keys = KeyTable(open_cached_side(prefix), args.table_device, first_pass=first)
            info["table_load_s"] = time.perf_counter() - t0
            info["placement"] = keys.describe()
            for p in tmp.glob("feats.*"):
                p.unlink()  # the wide table is not needed while training: the cache replaces it
            if keys.array is not None:
                floor_table = keys.array
            else:  # the cache file, its pages released after each floor (they are not the step's memory)
                import mmap

                floor_table = open_cached_side(prefix)
                release = lambda: floor_table._mmap.madvise(mmap.MADV_DONTNEED)  # noqa: E731

            def step():
                with tf.GradientTape() as tape:
                    loss, stats = cached_qk_loss(q_head(x), keys, pairs, lcfg)
                tape.gradient(loss, variables)
                return stats

            tf_floor = tf.function(lambda q: tf.matmul(q, keys.table, transpose_b=True)) if keys.table is not None else None
        else:
            floor_table = aligned_empty((n, SSCD_DIM))
            floor_table[:] = rng.normal(size=(1, SSCD_DIM)).astype(np.float32)  # same shape and dtype as a cached table

            def step():
                with tf.GradientTape() as tape:
                    loss, stats = qk_loss(q_head(x), k_head, table, pairs, lcfg, chunk=args.chunk)
                tape.gradient(loss, variables)
                return stats

            tf_floor = None
        qd = q_head(x).numpy()

        def floor() -> float:
            out = np.empty((b, n), np.float32)
            t0 = time.perf_counter()
            np.matmul(qd, floor_table.T, out=out)
            dt = time.perf_counter() - t0
            if release:
                release()
            return dt

        def floor_tf() -> float:
            t0 = time.perf_counter()
            tf_floor(tf.constant(qd)).numpy()
            return time.perf_counter() - t0

        step()  # traces every kernel
        floor()
        if tf_floor is not None:
            floor_tf()
        rss_before = _status_kb("VmRSS")
        times, floors, tf_floors, mine, peaks = [], [], [], [], []
        t_start = time.perf_counter()
        while len(times) < args.steps and (not times or time.perf_counter() - t_start < args.budget_s):
            floors.append(floor())
            if tf_floor is not None:
                tf_floors.append(floor_tf())
            _reset_peak()
            t0 = time.perf_counter()
            stats = step()
            times.append(time.perf_counter() - t0)
            peaks.append(_status_kb("VmHWM"))
            mine.append(stats["mine_s"])
        cached_gb = n * SSCD_DIM * 4 / 1e9
        return {
            "shape": "sscd", "method": method, "T": n, "steps": len(times),
            "s_per_step": float(np.median(times)), "s_min": float(np.min(times)), "mine_s": float(np.median(mine)),
            "floor_s": float(np.median(floors)), "floor_s_min": float(np.min(floors)),
            "tf_floor_s": float(np.median(tf_floors)) if tf_floors else None,
            "vs_floor": float(np.median(np.array(times) / np.array(floors))),
            "table_gb": table.nbytes / 1e9 if method == "old" else cached_gb, "cached_table_gb": cached_gb,
            "rss_before_gb": rss_before * 1024 / 1e9, "peak_gb": max(peaks) * 1024 / 1e9,
            "extra_gb": (max(peaks) - rss_before) * 1024 / 1e9, **info,
            **({"first_pass_rows": keys.first.last.get("rows"), "first_pass_prepare_s": keys.first.prepare_s}
               if method.startswith("cached") and keys.first is not None else {}),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_point(method: str, n: int, args) -> dict:
    """Measure one method at table size n in this process; return a result dict."""
    import tensorflow as tf

    if args.shape == "sscd":
        return run_sscd_point(method, n, args)

    from isc_qk.encoders import create
    from isc_qk.configs import LossConfig, ModelConfig
    from isc_qk.qk.loss import naive_qk_loss, qk_loss
    from isc_qk.models.heads import build_head

    encoder = create(args.backbone, weights=None)
    spec = encoder.spec
    mcfg = ModelConfig(backbone=args.backbone, backbone_weights=None)
    head = build_head(spec.dim, mcfg, seed=1)
    width = spec.dim + mcfg.dim
    lcfg = LossConfig(m=args.m)
    rng = np.random.default_rng(1)
    b = args.batch

    if method == "sweep":  # mining time per chunk size, best of --steps, same table
        from isc_qk.qk.loss import mine_hard_negatives

        table = make_table(n, width)
        q = tf.constant(rng.normal(scale=0.06, size=(b, mcfg.dim)).astype(np.float32))
        pairs = np.stack([np.arange(b), rng.choice(n, size=b, replace=False)], 1)
        chunks = [int(c) for c in args.sweep_chunks.split(",")]
        for c in chunks:  # trace once per chunk size before timing
            mine_hard_negatives(q, head, table[: 2 * c], pairs % [b, min(n, 2 * c)], b * args.m, chunk=c)
        best: dict[int, float] = {}
        for _ in range(args.steps):  # interleaved, so machine-load changes hit every size alike
            for c in chunks:
                t0 = time.perf_counter()
                mine_hard_negatives(q, head, table, pairs, b * args.m, chunk=c)
                best[c] = min(best.get(c, np.inf), time.perf_counter() - t0)
        return {"method": "sweep", "T": n, "mine_s_by_chunk": {str(c): v for c, v in best.items()}}

    if method == "backbone":
        backbone = encoder.model
        q_head = build_head(spec.dim, mcfg, seed=2)
        images = rng.uniform(0, 255, size=(b, spec.input_size, spec.input_size, 3)).astype(np.float32)
        gist = rng.normal(scale=0.06, size=(b, mcfg.dim)).astype(np.float32)
        variables = backbone.trainable_variables + q_head.trainable_variables

        def step():
            with tf.GradientTape() as tape:
                q = q_head(tf.concat([backbone(images, training=False), gist], 1))
                loss = tf.reduce_sum(tf.square(q))
            tape.gradient(loss, variables)

        table_bytes = 0
        warm = step
    else:
        table = make_table(n, width)
        table_bytes = table.nbytes
        q = tf.constant(rng.normal(scale=0.06, size=(b, mcfg.dim)).astype(np.float32))
        pairs = np.stack([np.arange(b), rng.choice(n, size=b, replace=False)], 1)
        variables = head.trainable_variables

        @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float16)])
        def forward(chunk):
            return head(tf.cast(chunk, tf.float32), training=False)

        def floor(tab=table):
            for s in range(0, tab.shape[0], args.chunk):
                forward(tf.convert_to_tensor(np.asarray(tab[s : s + args.chunk])))

        if method == "ours":

            def step(tab=table):
                with tf.GradientTape() as tape:
                    tape.watch(q)
                    loss, stats = qk_loss(q, head, tab, pairs, lcfg, chunk=args.chunk)
                tape.gradient(loss, [q] + variables)
                return stats

            def warm():  # traces every kernel on a small slice of the table
                sub = table[: min(n, 2 * args.chunk)]
                with tf.GradientTape() as tape:
                    tape.watch(q)
                    loss, _ = qk_loss(q, head, sub, pairs % [b, len(sub)], lcfg, chunk=args.chunk)
                tape.gradient(loss, [q] + variables)

        elif method == "naive":

            def step():
                with tf.GradientTape() as tape:
                    tape.watch(q)
                    keys = head(tf.cast(tf.constant(table), tf.float32), training=False)
                    loss = naive_qk_loss(q, keys, pairs, lcfg)
                tape.gradient(loss, [q] + variables)

            warm = None  # eager ops: nothing to trace; a small warm-up would not be the same graph
        elif method == "floor":
            step = floor
            warm = lambda: floor(table[: min(n, 2 * args.chunk)])  # noqa: E731
        else:
            raise SystemExit(f"unknown method {method}")

    # ours/naive also time the floor in the same process, alternating with their own steps:
    # the machine is shared and its load drifts, so only paired timings compare fairly
    paired = method in ("ours", "naive")
    if warm is not None:
        warm()
    if paired:
        floor(table[: min(n, 2 * args.chunk)])
    rss_before = _status_kb("VmRSS")
    _reset_peak()
    times, mine, floor_times = [], [], []
    t_start = time.perf_counter()
    while len(times) < args.steps and (not times or time.perf_counter() - t_start < args.budget_s):
        if paired:
            t0 = time.perf_counter()
            floor()
            floor_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stats = step()
        times.append(time.perf_counter() - t0)
        if isinstance(stats, dict):
            mine.append(stats["mine_s"])
    peak = _status_kb("VmHWM")
    return {
        "method": method,
        "T": n,
        "steps": len(times),
        "s_per_step": float(np.mean(times)),
        "s_min": float(np.min(times)),
        "mine_s": float(np.mean(mine)) if mine else None,
        "paired_floor_s_min": float(np.min(floor_times)) if floor_times else None,
        "vs_paired_floor": float(np.min(times) / np.min(floor_times)) if floor_times else None,
        "table_gb": table_bytes / 1e9,
        "rss_before_gb": rss_before * 1024 / 1e9,
        "peak_gb": peak * 1024 / 1e9,
        "extra_gb": (peak - rss_before) * 1024 / 1e9,
    }


# ----------------------------------------------------------------------------- driver
def _subprocess(method: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--point", method, str(n), *args.passthrough]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"method": method, "T": n, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("lite0", "sscd"), default="lite0",
                   help="sscd: the SSCD recipe's shape, cached vs old path (module docstring)")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--methods", default=None, help="lite0: floor,ours,naive (default); sscd: cached,old (default)")
    p.add_argument("--table-device", default="auto", help="sscd: where the cached table lives (auto|device|host)")
    p.add_argument("--first-pass", default="auto", help="sscd, method cached: auto|int8|none (cached-fp32 and "
                                                       "cached-int8 force one)")
    p.add_argument("--tmp", default="/tmp", help="sscd: folder for the temporary tables (removed after each point)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--steps", type=int, default=3, help="steps per point (fewer if --budget-s runs out)")
    p.add_argument("--budget-s", type=float, default=60.0, help="stop a point after this many seconds (>= 1 step)")
    p.add_argument("--naive-max-gb", type=float, default=6.0)
    p.add_argument("--no-backbone", action="store_true", help="skip the backbone-part measurement")
    p.add_argument("--sweep-chunks", default="", help="e.g. 4096,8192,16384,32768,65536: mining time per chunk size")
    p.add_argument("--sweep-T", type=int, default=100_000, help="table size for --sweep-chunks")
    p.add_argument("--json", default="benchmarks/results/step_time.json")
    p.add_argument("--point", nargs=2, metavar=("METHOD", "T"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.passthrough = [
        "--batch", str(args.batch), "--m", str(args.m), "--backbone", args.backbone,
        "--chunk", str(args.chunk), "--steps", str(args.steps), "--budget-s", str(args.budget_s),
        "--sweep-chunks", args.sweep_chunks, "--shape", args.shape, "--table-device", args.table_device,
        "--first-pass", args.first_pass,
        "--tmp", args.tmp,
    ]  # fmt: skip

    if args.point:
        print(json.dumps(run_point(args.point[0], int(args.point[1]), args)))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.shape == "sscd":
        return _main_sscd(args, sizes, console)
    methods = (args.methods or "floor,ours,naive").split(",")
    results: list[dict] = []
    if not args.no_backbone:
        console.print(f"backbone part ({args.backbone}, B={args.batch}) ...")
        results.append(_subprocess("backbone", 0, args))
    sweep = None
    if args.sweep_chunks:
        console.print(f"chunk sweep T={args.sweep_T:,} ...")
        sweep = _subprocess("sweep", args.sweep_T, args)
    last_naive: dict | None = None
    for n in sizes:
        for method in methods:
            if method == "naive" and last_naive and "extra_gb" in last_naive:
                predicted = last_naive["extra_gb"] * n / last_naive["T"]
                if predicted > args.naive_max_gb:
                    results.append(
                        {"method": "naive", "T": n, "skipped": f"predicted {predicted:.1f} GB > {args.naive_max_gb} GB"}
                    )
                    continue
            console.print(f"{method} T={n:,} ...")
            r = _subprocess(method, n, args)
            results.append(r)
            if method == "naive":
                last_naive = r

    table = Table(title=f"QK step, negatives part (B={args.batch}, M={args.m}, {args.backbone}, chunk={args.chunk})")
    for col in ("method", "T", "s/step", "best s", "mining s", "vs floor", "vs paired floor", "table GB", "peak GB", "extra GB", "peak/table"):
        table.add_column(col, justify="right")
    floor = {r["T"]: r["s_per_step"] for r in results if r.get("method") == "floor" and "s_per_step" in r}
    for r in results:
        if "s_per_step" not in r:
            table.add_row(r["method"], f"{r['T']:,}", r.get("skipped") or r.get("error", "?"), *[""] * 8)
            continue
        f = floor.get(r["T"])
        table.add_row(
            r["method"],
            f"{r['T']:,}" if r["T"] else "-",
            f"{r['s_per_step']:.3f}",
            f"{r['s_min']:.3f}",
            f"{r['mine_s']:.3f}" if r.get("mine_s") is not None else "",
            f"{r['s_per_step'] / f:.2f}x" if f and r["method"] != "backbone" else "",
            f"{r['vs_paired_floor']:.2f}x (best)" if r.get("vs_paired_floor") else "",
            f"{r['table_gb']:.3f}",
            f"{r['peak_gb']:.2f}",
            f"{r['extra_gb']:.3f}",
            f"{r['peak_gb'] / r['table_gb']:.2f}" if r["table_gb"] else "",
        )
    Console(width=140).print(table)
    if sweep and "mine_s_by_chunk" in sweep:
        st = Table(title=f"mining seconds by chunk size (T={args.sweep_T:,}, best of {args.steps})")
        st.add_column("chunk", justify="right")
        st.add_column("mining s", justify="right")
        for c, v in sweep["mine_s_by_chunk"].items():
            st.add_row(c, f"{v:.3f}")
        Console(width=140).print(st)
    elif sweep:
        console.print(f"chunk sweep failed: {sweep.get('error')}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"settings": vars(args) | {"point": None}, "results": results, "chunk_sweep": sweep}, indent=2) + "\n")
    os.replace(tmp, out)
    console.print(f"wrote {out}")


def _main_sscd(args, sizes: list[int], console) -> None:
    """The SSCD-shape run: cached and old step per T, each paired with the floor; a table + JSON."""
    from rich.console import Console
    from rich.table import Table

    methods = (args.methods or "cached,cached-fp32,old").split(",")
    results = []
    for n in sizes:
        for method in methods:
            console.print(f"sscd {method} T={n:,} ...")
            results.append(_subprocess(method, n, args))
    by = {(r["method"], r["T"]): r for r in results if "s_per_step" in r}
    table = Table(title=f"QK step, SSCD recipe shape (768 -> 256 linear, L2; B={args.batch}, M={args.m}; median of "
                        f"{args.steps}; floor = B x 256 x T float32 matmul, NumPy, same process)")
    for col in ("path", "T", "s/step", "mining s", "floor s", "vs floor", "TF floor s", "old / cached", "peak GB",
                "cached table GB", "peak - table", "cache build s"):
        table.add_column(col, justify="right")
    for r in results:
        if "s_per_step" not in r:
            table.add_row(r["method"], f"{r['T']:,}", r.get("error", "?"), *[""] * 9)
            continue
        old = by.get(("old", r["T"]))
        speed = f"{old['s_per_step'] / r['s_per_step']:.1f}x" if old and r["method"] != "old" else ""
        table.add_row(
            r["method"], f"{r['T']:,}", f"{r['s_per_step']:.3f}", f"{r['mine_s']:.3f}", f"{r['floor_s']:.3f}",
            f"{r['vs_floor']:.2f}x", f"{r['tf_floor_s']:.3f}" if r.get("tf_floor_s") else "", speed,
            f"{r['peak_gb']:.2f}", f"{r['cached_table_gb']:.2f}" if r["method"] != "old" else "",
            f"{r['peak_gb'] - r['cached_table_gb']:.2f}" if r["method"] != "old" else "",
            f"{r['cache_build_s']:.1f}" if r.get("cache_build_s") is not None else "",
        )
    Console(width=160).print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"settings": vars(args) | {"point": None}, "results": results}, indent=2) + "\n")
    os.replace(tmp, out)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
