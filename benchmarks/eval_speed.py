"""Time `isc-qk evaluate-uap` at dev-set shape: wall time, CPU time and peak memory.

Default data: 50,000 queries x 100,000 references x 256-d random Gaussian descriptors;
10,000 queries are noisy copies of a reference (the positives); the ground truth lists
25,000 queries (the 10,000 matched ones + 15,000 distractors), like the public dev file.

Each mode runs the real CLI in a fresh child process, which reports its own
`resource.getrusage` (user + system CPU of all its threads, peak RSS) so the figures include
imports, HDF5 reading, the search and the metrics, as the official evaluator's do. The data
is made in another child and this parent never imports numpy: Linux carries the parent's
peak RSS over into a forked child's `ru_maxrss`, which would otherwise inflate the figure.
Modes: `default` (leaderboard rule: the 25k GT queries, top 250k pairs) and `all-queries`
(all 50k queries, top 500k pairs: the same work as the official `compute_metrics.py --track2`).
Goal: half the official evaluator's ~45 s CPU / 560 MB on this data.

    python benchmarks/eval_speed.py [--queries 50000 --references 100000 --dim 256]
                                    [--positives 10000 --gt-queries 25000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
t = time.perf_counter()
from isc_qk.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = int(e.code or 0)
r = resource.getrusage(resource.RUSAGE_SELF)
print("@@" + json.dumps({"code": code, "wall_s": time.perf_counter() - t,
      "cpu_s": r.ru_utime + r.ru_stime, "peak_rss_mb": r.ru_maxrss / 1024}))
"""


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
    rids = [f"R{i:06d}" for i in range(nb)]
    write_descriptors(folder / "query.h5", Descriptors(qids, xq))
    write_descriptors(folder / "reference.h5", Descriptors(rids, xb))
    match = dict(zip(q_pos.tolist(), r_pos.tolist()))
    others = rng.choice(np.setdiff1d(np.arange(nq), q_pos), max(0, n_gt - n_pos), replace=False)
    listed = sorted(set(q_pos.tolist()) | set(others.tolist()))
    write_ground_truth(folder / "gt.csv", [(qids[i], rids[match[i]] if i in match else None) for i in listed])


def run_mode(folder: Path, extra: list[str]) -> dict:
    args = [
        "evaluate-uap", "--ground-truth", str(folder / "gt.csv"), "--query", str(folder / "query.h5"),
        "--reference", str(folder / "reference.h5"), "--json", str(folder / "metrics.json"), *extra,
    ]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"evaluate-uap failed:\n{proc.stdout}\n{proc.stderr}")
    stats = json.loads(line[2:])
    stats["metrics"] = json.loads((folder / "metrics.json").read_text())
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--references", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--positives", type=int, default=10_000)
    ap.add_argument("--gt-queries", type=int, default=25_000)
    ap.add_argument("--modes", default="default,all-queries")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--make-data", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_data is not None:  # child: write the data set and exit
        make_data(args.make_data, args.queries, args.references, args.dim, args.positives, args.gt_queries)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        sizes = ["--queries", args.queries, "--references", args.references, "--dim", args.dim,
                 "--positives", args.positives, "--gt-queries", args.gt_queries]
        subprocess.run([sys.executable, __file__, "--make-data", str(folder), *map(str, sizes)], check=True)
        console.print(f"data written in {time.perf_counter() - t:.1f} s")
        for mode in args.modes.split(","):
            extra = ["--all-queries"] if mode == "all-queries" else []
            console.print(f"running mode {mode} ...")
            results[mode] = run_mode(folder, extra)

    table = Table(title=f"evaluate-uap: {args.queries:,} queries x {args.references:,} refs x {args.dim}-d")
    for col in ("mode", "queries searched", "pairs kept", "micro-AP", "wall s", "CPU s", "peak RSS MB"):
        table.add_column(col, justify="right")
    for mode, r in results.items():
        m = r["metrics"]
        table.add_row(mode, f"{m['n_queries_searched']:,}", f"{m['n_predictions']:,}", f"{m['micro_ap']:.4f}",
                      f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['peak_rss_mb']:.0f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
