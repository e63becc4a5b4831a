"""Seconds per QK training step and peak memory as the key table grows (T = 10k, 100k, 1M).

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


def run_point(method: str, n: int, args) -> dict:
    """Measure one method at table size n in this process; return a result dict."""
    import tensorflow as tf

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
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--methods", default="floor,ours,naive")
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
        "--sweep-chunks", args.sweep_chunks,
    ]  # fmt: skip

    if args.point:
        print(json.dumps(run_point(args.point[0], int(args.point[1]), args)))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
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


if __name__ == "__main__":
    main()
