"""One QK Iteration phase (train-q) on a DISC-layout folder, from Python, with the
evaluation before and after.

    python examples/qk_phase.py ../shared/minidisc runs/qk-phase-example --epochs 1
    python examples/qk_phase.py DATA WORK --backbone tiny --dim 8 --steps 3   # seconds (what the tests run)

GIST-PCA start fitted on train/, edited copies of train/ as training queries (AugLy), an
untrained model (which reproduces the start), one phase Q1 against every key, then both models
evaluated on queries/ vs references/. Re-run to resume; `--tensorboard DIR` logs the steps.
"""

import argparse
from pathlib import Path

import isc_qk.api as qk

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("data", type=Path)
parser.add_argument("work", type=Path)
parser.add_argument("--backbone", default="efficientnet-lite0")
parser.add_argument("--dim", type=int, default=256)
parser.add_argument("--copies", type=int, default=2)
parser.add_argument("--epochs", type=float, default=1.0)
parser.add_argument("--steps", type=int, default=None)
parser.add_argument("--tensorboard", type=Path, default=None)
args = parser.parse_args()

pca = qk.fit_pca(args.data / "train", args.work / "gist", dim=args.dim)
aug = qk.augment(args.data / "train", args.work / "aug", copies=args.copies)
weights = None if args.backbone == "tiny" else "auto"  # the tiny test backbone has no pretrained weights
start = qk.init_model(pca, args.work / "models" / "start", backbone=args.backbone, backbone_weights=weights)
report = qk.run_phase(start, "q", train_images=args.data / "train", augmented=aug, out=args.work / "models" / "Q1",
                      epochs=args.epochs, steps=args.steps, tensorboard=args.tensorboard)
print(f"Q1: {report.steps} steps, loss {report.first_loss:.4f} -> {report.last_loss:.4f}")

for name, model in (("start", start), ("Q1", qk.load_model(args.work / "models" / "Q1"))):
    queries = qk.describe(args.data / "queries", model=model, side="q")
    refs = qk.describe(args.data / "references", model=model, side="k")
    result = qk.evaluate(queries, refs, args.data / "ground_truth.csv")
    print(f"{name}: micro-AP {result.micro_ap:.4f}, recall@rank1 {result.recall_at_rank1:.4f}")
