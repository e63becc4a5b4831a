"""Are new images copies of my references? Calibrate a decision threshold on labelled
queries at a chosen precision, then apply it to new images, from Python.

    python examples/match_new_images.py --pca runs/sscd/pca --references DATA/references \
        --labelled-queries DATA/queries --ground-truth DATA/ground_truth.csv --new-images NEW --work WORK
    (or --model MODEL_DIR instead of --pca: a trained QK model; references with its K side)

Writes WORK/calibration.json (the evaluate-uap JSON of the labelled queries) and
WORK/matches.csv (+ .json: where the threshold came from), and prints the pairs decided "match".
"""

import argparse
from pathlib import Path

import isc_qk.api as qk

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
how = parser.add_mutually_exclusive_group(required=True)
how.add_argument("--model", type=Path, help="a QK model folder")
how.add_argument("--pca", type=Path, help="a frozen descriptor's PCA (gist-pca / descriptor-pca --train)")
parser.add_argument("--references", type=Path, required=True)
parser.add_argument("--labelled-queries", type=Path, required=True)
parser.add_argument("--ground-truth", type=Path, required=True)
parser.add_argument("--new-images", type=Path, required=True)
parser.add_argument("--work", type=Path, required=True)
parser.add_argument("--precision", type=float, default=0.9)
args = parser.parse_args()

describer = {"model": args.model} if args.model else {"pca": args.pca}
refs = qk.describe(args.references, side="k", out=args.work / "references.h5", **describer)
labelled = qk.describe(args.labelled_queries, side="q", **describer)
qk.metrics(qk.evaluate(labelled, refs, args.ground_truth), args.work / "calibration.json")

matches = qk.match(args.work / "references.h5", images=args.new_images, side="q",
                   calibration=args.work / "calibration.json", precision=args.precision, top_k=1,
                   out=args.work / "matches.csv", **describer)
source = matches.attrs["threshold_source"]
print(f"threshold {matches.attrs['threshold']:.4g}: precision {source['precision']:.3f} >= {args.precision} "
      f"on the labelled queries (recall {source['recall']:.3f} there)")
copies = matches[matches["decision"] == "match"]
print(f"{copies['query_id'].nunique()} of {matches['query_id'].nunique()} new images match a reference:")
print(copies[["query_id", "reference_id", "score"]].to_string(index=False))
