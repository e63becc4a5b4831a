"""How exactly `evaluate-uap` agrees with the official ISC2021 evaluator, at full precision.

Needs a checkout of facebookresearch/isc2021 (``ISC2021_REPO``; its code is CC BY-NC, so it is
run from there, never copied). On the synthetic data of `eval_speed.py` (Gaussian descriptors,
noisy copies as positives), with the official tool's default rule (every query searched, a
global cap of ``--max-results`` pairs) it reports:

* the official micro-AP, and isc-qk's METRIC on the official tool's own predictions (same
  pairs, same scores): equal to the last bit means the rule is the same code path in effect;
* for each search method (``ISC_QK_SEARCH`` int8 / fp32 / faiss): isc-qk's micro-AP and its
  difference from the official one, the pairs kept by one and not the other, how many kept
  scores differ and by how many float32 ulps; and the official metric on isc-qk's predictions.

    ISC2021_REPO=/tmp/isc2021 python benchmarks/official_agreement.py --queries 50000 \\
        --references 20000 --positives 10000 --gt-queries 25000 --max-results 500000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--references", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--positives", type=int, default=1000)
    ap.add_argument("--gt-queries", type=int, default=2500)
    ap.add_argument("--max-results", type=int, default=50000)
    ap.add_argument("--data", type=Path, help="keep the generated files here (default: a temporary folder)")
    args = ap.parse_args()
    repo = os.environ.get("ISC2021_REPO")
    if not repo or not (Path(repo) / "isc" / "metrics.py").is_file():
        raise SystemExit("set ISC2021_REPO to a checkout of facebookresearch/isc2021")
    sys.path.insert(0, repo)
    sys.path.insert(0, str(Path(__file__).parent))
    from eval_speed import make_data
    from isc.descriptor_matching import match_and_make_predictions
    from isc.io import read_ground_truth as official_gt
    from isc.metrics import PredictedMatch
    from isc.metrics import evaluate as official_evaluate

    from isc_qk.evaluation.evaluate import evaluate
    from isc_qk.evaluation.metrics import evaluate_predictions
    from isc_qk.evaluation.search import global_top_pairs
    from isc_qk.formats import read_descriptors, read_ground_truth

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "gt.csv").is_file():
            make_data(folder, args.queries, args.references, args.dim, args.positives, args.gt_queries)
        q, r = read_descriptors(folder / "query.h5"), read_descriptors(folder / "reference.h5")
        gt, ogt = read_ground_truth(folder / "gt.csv"), official_gt(str(folder / "gt.csv"))
        t0 = time.perf_counter()
        preds = match_and_make_predictions(q.vectors, q.ids, r.vectors, r.ids, args.max_results)
        om = official_evaluate(ogt, preds)
        official = om.average_precision
        print(f"{len(q.ids)} queries x {len(r.ids)} references x {q.dim}-d, cap {args.max_results}")
        print(f"official: micro-AP {official!r} ({len(preds)} pairs, {time.perf_counter() - t0:.1f} s)")
        mm = evaluate_predictions([p.query for p in preds], [p.db for p in preds], [float(p.score) for p in preds],
                                  gt.pairs)
        same = [mm.micro_ap == official, mm.recall_at_p90 == om.recall_at_p90,
                mm.threshold_at_p90 == om.threshold_at_p90, mm.recall_at_rank1 == om.recall_at_rank1,
                mm.recall_at_rank10 == om.recall_at_rank10]
        print(f"isc-qk's metric on the official predictions: micro-AP {mm.micro_ap!r}; bit-identical micro-AP, "
              f"recall@P90, its threshold, recall@1, recall@10: {same}")
        theirs = {(p.query, p.db): np.float32(p.score) for p in preds}
        for method in ("int8", "fp32", "faiss"):
            os.environ["ISC_QK_SEARCH"] = method
            res = evaluate(q, r, gt, max_results=args.max_results, all_queries=True)
            pairs = global_top_pairs(q.vectors, r.vectors, args.max_results, method=method)
            mine = {(q.ids[a], r.ids[b]): np.float32(-d) for a, b, d in zip(pairs.query, pairs.reference, pairs.distance)}
            common = set(mine) & set(theirs)
            ulps = [abs(int(mine[k].view(np.int32)) - int(theirs[k].view(np.int32))) for k in common if mine[k] != theirs[k]]
            back = official_evaluate(ogt, [PredictedMatch(*k, v) for k, v in mine.items()]).average_precision
            print(f"{method:>5}: micro-AP {res.micro_ap!r}, |difference| {abs(res.micro_ap - official):.2g}; pairs only "
                  f"here {len(set(mine) - set(theirs))}, only there {len(set(theirs) - set(mine))}; scores that differ "
                  f"{len(ulps)} of {len(common)} (max {max(ulps, default=0)} ulps); official metric on these "
                  f"predictions {'equal' if back == res.micro_ap else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
