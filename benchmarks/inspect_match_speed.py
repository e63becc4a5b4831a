"""Time `isc-qk inspect` and `isc-qk match` next to `evaluate-uap` on the same data, in one run.

Data: eval_speed's random descriptors (by default 50,000 queries x 100,000 references x 256-d,
10,000 positives, 25,000 ground-truth queries; `--disc21`: 50,000 x 1,000,000). Each command
runs in a fresh child process reporting its wall and CPU seconds and peak RSS:

* ``evaluate-uap``: the leaderboard rule (the ground-truth queries, 10 x their number of pairs);
* ``inspect``: the same evaluation (one search) plus what the page needs: the shown queries
  scanned against all references, thumbnails, the PR plot, the HTML and JSON. The image folders
  are empty here (every thumbnail is the placeholder): the page reads only the few hundred
  images it shows, whatever the data size, and that cost is measured on real images on minidisc
  (README);
* ``match``: ALL queries against all references, the top 10 of each plus every pair above the
  evaluation's threshold@P90 (calibrated from its JSON).

    python benchmarks/inspect_match_speed.py [--disc21] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import CLI_CHILD, _child, make_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--references", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--positives", type=int, default=10_000)
    ap.add_argument("--gt-queries", type=int, default=25_000)
    ap.add_argument("--disc21", action="store_true", help="50,000 x 1,000,000 (the DISC21 final shape)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default="evaluate-uap,inspect,match", help="comma list of the runs (evaluate-uap "
                    "always runs first when match runs: it writes the calibration)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "match" in only:
        only.add("evaluate-uap")
    if args.disc21:
        args.references = 1_000_000
    rows = {}
    with tempfile.TemporaryDirectory(prefix="isc-qk-bench-") as tmp:
        d = Path(tmp)
        print(f"data: {args.queries:,} queries x {args.references:,} references x {args.dim}", flush=True)
        make_data(d, args.queries, args.references, args.dim, args.positives, args.gt_queries)
        (d / "qimg").mkdir()
        (d / "rimg").mkdir()
        common = ["--query", str(d / "query.h5"), "--reference", str(d / "reference.h5")]
        runs = {
            "evaluate-uap": ["evaluate-uap", "--ground-truth", str(d / "gt.csv"), *common, "--json", str(d / "m.json")],
            "inspect": ["inspect", "--ground-truth", str(d / "gt.csv"), *common, "--query-images", str(d / "qimg"),
                        "--reference-images", str(d / "rimg"), "--out", str(d / "report")],
            "match": ["match", *common, "--calibration", str(d / "m.json"), "--top-k", "10", "--out",
                      str(d / "matches.csv"), "--no-progress"],
        }
        for name, cmd in runs.items():
            if name not in only:
                continue
            stats, _ = _child([sys.executable, "-c", CLI_CHILD, *cmd])
            if stats["code"] != 0:
                raise SystemExit(f"{name} failed")
            rows[name] = stats
            extra = ""
            if name == "match":
                meta = json.loads((d / "matches.csv.json").read_text())
                extra = f", {meta['n_rows']:,} rows, {meta['n_matches']:,} decided match"
            print(f"{name:13s} wall {stats['wall_s']:7.1f} s  CPU {stats['cpu_s']:7.1f} s  "
                  f"peak RSS {stats['peak_rss_mb']:7.0f} MB{extra}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
