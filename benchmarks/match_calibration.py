"""Does a threshold calibrated at precision p on labelled queries keep precision p on NEW queries?

Splits the labelled queries of a benchmark (e.g. minidisc's 1,000) at random into two halves,
A and B, `--splits` times. For each split: `evaluate-uap` on A writes its JSON (the
calibration); `isc-qk match` runs B's queries against all references with the threshold read
from A's JSON at `--precision`; the decisions are then scored with B's ground truth. Reported
per split: the threshold, the pairs decided "match" on B, the precision reached on B with its
binomial standard error sqrt(p (1 - p) / n) (and combined with that of A's precision at the
threshold, which is an estimate too), the recall on B; and over the splits: the mean
precision, its spread, and how often B fell below the target by more than 2 standard errors.
Every step is the tool's own function (`evaluation.evaluate`, `evaluation.report.to_json`,
`matching.stage.match`), the same code the commands run.

    python benchmarks/match_calibration.py --ground-truth ../shared/minidisc/ground_truth.csv \\
        --query runs/sscd/queries.h5 --reference runs/sscd/references.h5 [--splits 20] [--precision 0.9]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    from isc_qk.evaluation.evaluate import evaluate
    from isc_qk.evaluation.report import to_json
    from isc_qk.formats import Descriptors, GroundTruth, read_descriptors, read_ground_truth, write_descriptors, write_json
    from isc_qk.matching.stage import match

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ground-truth", type=Path, required=True)
    ap.add_argument("--query", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--precision", type=float, default=0.9)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    gt = read_ground_truth(args.ground_truth)
    q = read_descriptors(args.query)
    q_row = {i: k for k, i in enumerate(q.ids)}
    truth = set(gt.pairs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="isc-qk-cal-") as tmp:
        tmp = Path(tmp)
        for s in range(args.splits):
            rng = np.random.default_rng([args.seed, s])
            order = rng.permutation(len(gt.query_ids))
            half = len(order) // 2
            a_ids = [gt.query_ids[i] for i in sorted(order[:half])]
            b_ids = [gt.query_ids[i] for i in sorted(order[half:])]
            a_set, b_set = set(a_ids), set(b_ids)
            gt_a = GroundTruth(a_ids, [p for p in gt.pairs if p[0] in a_set])
            n_pos_b = sum(1 for p in gt.pairs if p[0] in b_set)
            ref = read_descriptors(args.reference)
            res = evaluate(q, ref, gt_a)
            write_json(tmp / "a.json", to_json(res))
            qb = Descriptors(b_ids, q.vectors[[q_row[i] for i in b_ids]])
            write_descriptors(tmp / "b.h5", qb)
            rep = match(args.reference, tmp / "m.csv", query=tmp / "b.h5", calibration=tmp / "a.json",
                        precision=args.precision, top_k=1, progress=False)
            import pandas as pd

            got = pd.read_csv(tmp / "m.csv", keep_default_na=False)
            decided = got[got["decision"] == "match"]
            n = len(decided)
            correct = sum((a, b) in truth for a, b in zip(decided["query_id"], decided["reference_id"]))
            p = correct / n if n else float("nan")
            se = math.sqrt(p * (1 - p) / n) if n else float("nan")
            pa, ra = rep.threshold_source["precision"], rep.threshold_source["recall"]
            n_a = round(ra * gt_a.n_positives / pa)  # pairs kept on A at the threshold
            se_a = math.sqrt(pa * (1 - pa) / n_a) if n_a else float("nan")
            row = {"split": s, "threshold": rep.threshold, "precision_on_a": pa, "recall_on_a": ra, "decided_on_a": n_a,
                   "se_a": se_a, "decided_on_b": n, "correct_on_b": correct, "precision_on_b": p, "se": se,
                   "se_combined": math.hypot(se, se_a), "recall_on_b": correct / n_pos_b, "positives_b": n_pos_b}
            rows.append(row)
            print(f"split {s:2d}: threshold {rep.threshold:8.4f} (A: precision {row['precision_on_a']:.3f}, "
                  f"recall {row['recall_on_a']:.3f}) -> B: {correct}/{n} correct = precision {p:.3f} +- {se:.3f}, "
                  f"recall {row['recall_on_b']:.3f}", flush=True)
    ps = np.array([r["precision_on_b"] for r in rows])
    ses = np.array([r["se"] for r in rows])
    below = int(((args.precision - ps) > 2 * ses).sum())
    # the threshold is itself estimated on A's few hundred pairs: B's precision varies by both
    se_comb = np.array([r["se_combined"] for r in rows])
    below_comb = int(((args.precision - ps) > 2 * se_comb).sum())
    summary = {"target": args.precision, "splits": len(rows), "mean_precision_on_b": float(ps.mean()),
               "std_precision_on_b": float(ps.std(ddof=1)) if len(ps) > 1 else 0.0,
               "min_precision_on_b": float(ps.min()), "mean_se": float(ses.mean()),
               "mean_decided_on_b": float(np.mean([r["decided_on_b"] for r in rows])),
               "mean_recall_on_b": float(np.mean([r["recall_on_b"] for r in rows])),
               "mean_se_combined": float(se_comb.mean()), "below_target_by_more_than_2se": below,
               "below_target_by_more_than_2se_combined": below_comb}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
