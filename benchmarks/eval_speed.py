"""Time `isc-qk evaluate-uap` against its floor and the official evaluator, in one run.

Data: random Gaussian descriptors, by default 50,000 queries x 100,000 references x 256-d
(`--disc21`: 50,000 x 1,000,000, the final DISC21 shape); 10,000 queries are noisy copies of
a reference (the positives); the ground truth lists 25,000 queries (the 10,000 matched ones +
15,000 distractors), like the public dev file.

Runs (each in a fresh child process that reports its own `resource.getrusage`: user + system
CPU of all its threads and peak RSS, so the figures include imports and HDF5 reading as the
official evaluator's do; this parent never imports numpy, whose pages Linux would carry over
into a forked child's `ru_maxrss`):

* ``floor-fp32``: the bare float32 matmul of all query x reference pairs (numpy's BLAS, in
  4096 x 16384 tiles; only the matmul loop is timed) -- the least any exact fp32 search does;
  ``floor-int8``: the same with onnxruntime's MatMulInteger (the int8 first pass's matmul
  call, which also returns the maxima of its runs of 256 scores).
* ``isc-qk-int8`` / ``isc-qk-fp32`` / ``isc-qk-faiss``: ``evaluate-uap --all-queries
  --max-results 500000`` (the official tool's work) with ``ISC_QK_SEARCH`` set in the child.
* ``official``: ``scripts/compute_metrics.py --track2`` of facebookresearch/isc2021 when
  ``ISC2021_REPO`` points at a checkout of it (skipped with a note otherwise); it and
  isc-qk alternate, ``--reps`` times.
* ``isc-qk-default``: the leaderboard rule (the 25k ground-truth queries, top 250k pairs).

    ISC2021_REPO=/tmp/isc2021 python benchmarks/eval_speed.py [--reps 2] [--json out.json]
    python benchmarks/eval_speed.py --disc21            # 50k x 1M: isc-qk (auto) only
    python benchmarks/eval_speed.py --queries 5000 --references 10000 --positives 1000 \\
        --gt-queries 2500 --max-results 50000          # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPORT = r"""
import json, resource, time
def report(extra):
    r = resource.getrusage(resource.RUSAGE_SELF)
    print("@@" + json.dumps({"wall_s": time.perf_counter() - T0, "cpu_s": r.ru_utime + r.ru_stime,
                             "peak_rss_mb": r.ru_maxrss / 1024, **extra}), flush=True)
"""

CLI_CHILD = "import time; T0 = time.perf_counter()\n" + REPORT + r"""
import sys
from isc_qk.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = int(e.code or 0)
report({"code": code})
"""

OFFICIAL_CHILD = "import time; T0 = time.perf_counter()\n" + REPORT + r"""
import runpy, sys
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
report({"code": 0})
"""

FLOOR_CHILD = "import time; T0 = time.perf_counter()\n" + REPORT + r"""
import sys
from concurrent.futures import ThreadPoolExecutor
import h5py, numpy as np
kind, qpath, rpath = sys.argv[1:4]
with h5py.File(qpath) as f:
    xq = f["vectors"][:]
with h5py.File(rpath) as f:
    xb = f["vectors"][:]
t0, c0 = time.perf_counter(), time.process_time()
if kind == "fp32":  # numpy's BLAS, all its threads, 4096 x 16384 tiles
    buf = np.empty(4096 * 16384, np.float32)
    for i in range(0, len(xq), 4096):
        a = xq[i : i + 4096]
        for j in range(0, len(xb), 16384):
            b = xb[j : j + 16384]
            np.matmul(a, b.T, out=buf[: len(a) * len(b)].reshape(len(a), len(b)))  # contiguous: BLAS
else:  # onnxruntime MatMulInteger (+ its run maxima, one call), sessions shared by threads, as prefilter.Scanner
    from isc_qk.evaluation import prefilter as pf
    k = pf.kernel_for("int8", xq.shape[1])
    qa = np.random.default_rng(0).integers(1, 128, xq.shape).astype(np.uint8)
    tiles = [np.ascontiguousarray(np.random.default_rng(1).integers(-127, 128, (xq.shape[1], pf.TILE)).astype(np.int8))
             for _ in range(-(-len(xb) // pf.TILE))]
    values = [k.tile(t) for t in tiles]
    t0, c0 = time.perf_counter(), time.process_time()
    def block(i):
        out = np.empty((pf.ROWS, pf.TILE), np.int32)
        top = np.empty((pf.ROWS, pf.TILE // pf.SEG), np.int32)
        a = qa[i : i + pf.ROWS]
        for v in values:
            k(a, v, out[: len(a)], top[: len(a)])
    with ThreadPoolExecutor(pf.default_threads()) as ex:
        list(ex.map(block, range(0, len(xq), pf.ROWS)))
report({"code": 0, "loop_wall_s": time.perf_counter() - t0, "loop_cpu_s": time.process_time() - c0})
"""

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def make_data(folder: Path, nq: int, nb: int, d: int, n_pos: int, n_gt: int, seed: int = 0) -> None:
    import numpy as np

    from isc_qk.formats import Descriptors, write_descriptors, write_ground_truth

    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((nb, d), dtype=np.float32)
    xq = rng.standard_normal((nq, d), dtype=np.float32)
    q_pos = rng.choice(nq, n_pos, replace=False)
    r_pos = rng.choice(nb, n_pos, replace=False)
    # a spread of difficulty: some copies are near-duplicates, others barely closer than chance
    noise = rng.uniform(0.2, 1.6, (n_pos, 1)).astype(np.float32)
    xq[q_pos] = xb[r_pos] + noise * rng.standard_normal((n_pos, d), dtype=np.float32)
    qids = [f"Q{i:05d}" for i in range(nq)]
    rids = [f"R{i:07d}" for i in range(nb)]
    write_descriptors(folder / "query.h5", Descriptors(qids, xq))
    del xq
    write_descriptors(folder / "reference.h5", Descriptors(rids, xb))
    match = dict(zip(q_pos.tolist(), r_pos.tolist()))
    others = rng.choice(np.setdiff1d(np.arange(nq), q_pos), max(0, n_gt - n_pos), replace=False)
    listed = sorted(set(q_pos.tolist()) | set(others.tolist()))
    write_ground_truth(folder / "gt.csv", [(qids[i], rids[match[i]] if i in match else None) for i in listed])


def _child(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[dict, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"child failed: {' '.join(cmd[:4])} ...\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[2:]), proc.stdout


def run_isc_qk(folder: Path, method: str | None, max_results: int | None, all_queries: bool) -> dict:
    args = ["evaluate-uap", "--ground-truth", str(folder / "gt.csv"), "--query", str(folder / "query.h5"),
            "--reference", str(folder / "reference.h5"), "--json", str(folder / "metrics.json"), "--timings"]
    if all_queries:
        args.append("--all-queries")
    if max_results is not None:
        args += ["--max-results", str(max_results)]
    env = {"ISC_QK_SEARCH": method} if method else {}
    stats, _ = _child([sys.executable, "-c", CLI_CHILD, *args], env)
    m = json.loads((folder / "metrics.json").read_text())
    stats.update(micro_ap=m["micro_ap"], n_predictions=m["n_predictions"], n_queries_searched=m["n_queries_searched"])
    search = m.get("search_seconds") or {}
    if search.get("cpu") is not None:  # the search alone, comparable with a floor's matmul loop
        stats.update(loop_wall_s=search["wall"], loop_cpu_s=search["cpu"])
    return stats


def run_official(folder: Path, repo: Path, max_results: int) -> dict:
    script = repo / "scripts" / "compute_metrics.py"
    args = ["--track2", "--gt_filepath", str(folder / "gt.csv"), "--query_descs", str(folder / "query.h5"),
            "--db_descs", str(folder / "reference.h5"), "--max_results", str(max_results)]
    env = {"PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MPLBACKEND": "Agg"}
    stats, out = _child([sys.executable, "-c", OFFICIAL_CHILD, str(script), *args], env, cwd=str(repo))
    ap = re.search(r"Average Precision:\s*([0-9.]+)", out)
    n = re.search(r"Evaluating (\d+) predictions", out)
    stats.update(micro_ap_printed=ap.group(1) if ap else None, n_predictions=int(n.group(1)) if n else None)
    return stats


def run_floor(folder: Path, kind: str) -> dict:
    stats, _ = _child([sys.executable, "-c", FLOOR_CHILD, kind, str(folder / "query.h5"), str(folder / "reference.h5")])
    return stats


def cpu_description() -> dict:
    info = {"cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["model"] = re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
        flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())
        info["flags"] = [f for f in CPU_FLAGS if f in flags]
    except (OSError, AttributeError):
        pass
    return info


def plan(args: argparse.Namespace, official: Path | None) -> list[str]:
    """The run names, in order: floors first, then official and isc-qk alternating."""
    if args.runs:
        names = args.runs.split(",")
    elif args.disc21:
        names = ["isc-qk-auto"]
    else:
        names = ["floor-fp32", "floor-int8"]
        for _ in range(args.reps):
            names += (["official"] if official else []) + ["isc-qk-int8", "isc-qk-fp32", "isc-qk-faiss"]
        names.append("isc-qk-default")
    return [n for n in names if n != "official" or official]


def execute(name: str, folder: Path, args: argparse.Namespace, official: Path | None) -> dict:
    if name.startswith("floor-"):
        return run_floor(folder, name.removeprefix("floor-"))
    if name == "official":
        return run_official(folder, official, args.max_results)
    if name == "isc-qk-default":
        return run_isc_qk(folder, None, None, all_queries=False)
    method = name.removeprefix("isc-qk-")
    return run_isc_qk(folder, None if method == "auto" else method, args.max_results, all_queries=True)


def _mean(results: list[tuple[str, dict]], name: str, key: str) -> float | None:
    vals = [r[key] for n, r in results if n == name and r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def ratios(results: list[tuple[str, dict]]) -> list[str]:
    """The issue's targets as ratios of means over the repetitions of one run."""
    lines = []
    official = _mean(results, "official", "cpu_s")
    for name in ("isc-qk-int8", "isc-qk-fp32", "isc-qk-faiss"):
        cpu = _mean(results, name, "cpu_s")
        if official and cpu:
            lines.append(f"{name} / official, process CPU: {cpu / official:.2f}x")
    for kind in ("fp32", "int8"):
        floor, search = _mean(results, f"floor-{kind}", "loop_cpu_s"), _mean(results, f"isc-qk-{kind}", "loop_cpu_s")
        proc = _mean(results, f"isc-qk-{kind}", "cpu_s")
        if floor and search:
            lines.append(f"isc-qk-{kind} / floor-{kind} matmul loop, CPU: search {search / floor:.2f}x, "
                         f"whole process {proc / floor:.2f}x")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--references", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--positives", type=int, default=10_000)
    ap.add_argument("--gt-queries", type=int, default=25_000)
    ap.add_argument("--max-results", type=int, default=500_000, help="the cap of the like-for-like runs")
    ap.add_argument("--disc21", action="store_true", help="50,000 x 1,000,000 x 256: isc-qk (auto) only")
    ap.add_argument("--reps", type=int, default=2, help="alternating repetitions of official / isc-qk")
    ap.add_argument("--runs", default="", help="comma-separated run names instead of the default plan")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--make-data", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.disc21:
        args.references = 1_000_000
    if args.make_data is not None:  # child: write the data set and exit
        make_data(args.make_data, args.queries, args.references, args.dim, args.positives, args.gt_queries)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    repo = Path(os.environ["ISC2021_REPO"]) if os.environ.get("ISC2021_REPO") else None
    if repo is not None and not (repo / "scripts" / "compute_metrics.py").is_file():
        raise SystemExit(f"ISC2021_REPO={repo} has no scripts/compute_metrics.py")
    if repo is None:
        console.print("note: ISC2021_REPO not set: the official evaluator is not timed")
    names = plan(args, repo)
    results: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        sizes = ["--queries", args.queries, "--references", args.references, "--dim", args.dim,
                 "--positives", args.positives, "--gt-queries", args.gt_queries]
        subprocess.run([sys.executable, __file__, "--make-data", str(folder), *map(str, sizes)], check=True)
        console.print(f"data written in {time.perf_counter() - t:.1f} s")
        for name in names:
            console.print(f"running {name} ...")
            r = execute(name, folder, args, repo)
            console.print(f"  {name}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
            results.append((name, r))

    title = f"{args.queries:,} queries x {args.references:,} refs x {args.dim}-d, cap {args.max_results:,}"
    out = Console(width=150)
    table = Table(title=title)
    for col in ("run", "pairs kept", "micro-AP", "wall s", "CPU s", "peak RSS MB", "loop wall / CPU s"):
        table.add_column(col, justify="right")
    for name, r in results:
        ap_text = r.get("micro_ap_printed") or (f"{r['micro_ap']:.5f}" if "micro_ap" in r else "")
        loop = f"{r['loop_wall_s']:.1f} / {r['loop_cpu_s']:.1f}" if "loop_cpu_s" in r else ""
        kept = f"{r['n_predictions']:,}" if r.get("n_predictions") is not None else ""
        table.add_row(name, kept, ap_text, f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['peak_rss_mb']:.0f}", loop)
    out.print(table)
    out.print("loop: the floors' matmul loop; isc-qk's search alone (evaluate-uap's JSON `search_seconds`), "
              "without start-up, reading and scoring")
    for line in ratios(results):
        out.print(line)
    cpu = cpu_description()
    out.print(f"CPU: {cpu.get('model', '?')}, {cpu['cores']} cores, flags: {' '.join(cpu.get('flags', []))}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu,
                                         "results": [{"run": n, **r} for n, r in results]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
