#!/usr/bin/env bash
# GIST-PCA256 baseline end to end on a DISC-layout folder (default: ../shared/minidisc).
#   bash examples/gist_baseline.sh [DATA_DIR] [WORK_DIR]
set -euo pipefail
DATA=${1:-../shared/minidisc}
WORK=${2:-runs/gist-baseline}
mkdir -p "$WORK"
isc-qk gist-pca --train "$DATA/train" --n-train 10000 --out "$WORK/gist"          # PCA on train only
isc-qk gist-pca --pca "$WORK/gist/pca.npz" --images "$DATA/references" --out "$WORK/references.h5"
isc-qk gist-pca --pca "$WORK/gist/pca.npz" --images "$DATA/queries" --out "$WORK/queries.h5"
isc-qk submit --query "$WORK/queries.h5" --reference "$WORK/references.h5" --out "$WORK/submission.h5"
isc-qk evaluate-uap --ground-truth "$DATA/ground_truth.csv" --submission "$WORK/submission.h5" \
    --json "$WORK/metrics.json" --plot "$WORK/pr.png"
