"""End-to-end throughput of the QK stages on real images: precompute, train-q, describe.

Unlike `step_time.py` (the loss alone, synthetic tables), this runs the library functions as
the CLI does -- decoding JPEGs in threads, GIST, the backbone, float16 tables, checkpoints --
so it shows what a user waits for. Steps:

1. GIST PCA on the first N images (dim 256 needs N >= 256; smaller N uses dim = N // 2),
   `init_model` with --backbone;
2. `augment_folder` makes one edited copy of each image (the queries);
3. `precompute` K features of the N images  -> images/s;
4. `train` (train-q, table negatives) for --steps steps -> s/step (data + forward/backward +
   mining over the N-row table);
5. `describe` the N queries with the trained Q model -> images/s.

    python benchmarks/stage_throughput.py [--images /work/shared/minidisc/train] [--n 256]
        [--backbone efficientnet-lite0] [--steps 10] [--batch 32] [--workers 2]
        [--work /tmp/isc_qk_bench] [--json benchmarks/results/stage_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=Path("/work/shared/minidisc/train"))
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/isc_qk_bench"))
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)

    from isc_qk.augment import augment_folder
    from isc_qk.describe import describe
    from isc_qk.gist_pca import describe_gist_files, fit_pca
    from isc_qk.images import list_images
    from isc_qk.model import ModelConfig
    from isc_qk.precompute import precompute
    from isc_qk.train import TrainConfig, init_model, train

    shutil.rmtree(a.work, ignore_errors=True)
    keys = a.work / "train"
    keys.mkdir(parents=True)
    files = list_images(a.images)[: a.n]
    for f in files:
        shutil.copy(f.path, keys / f.path.name)
    n = len(files)
    dim = 256 if n >= 256 else max(2, n // 2)
    res: dict = {"backbone": a.backbone, "n_images": n, "dim": dim, "batch": a.batch, "steps": a.steps,
                 "workers": a.workers, "cpu_count": os.cpu_count()}

    t = time.perf_counter()
    gist = describe_gist_files(sorted(keys.iterdir()))
    fit_pca(gist.gist960, dim=dim).save(a.work / "pca.npz")
    init_model(a.work / "pca.npz", ModelConfig(backbone=a.backbone, dim=dim), a.work / "m0")
    res["init_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    augment_folder(keys, a.work / "aug", seed=0, copies=1, workers=a.workers, progress=False)
    res["augment_s"] = round(time.perf_counter() - t, 2)

    rep = precompute(a.work / "m0", "k", keys, a.work / "kfeats", batch=a.batch, workers=a.workers, progress=False)
    res["precompute_images_per_s"] = round(rep.rows / rep.seconds, 1)

    cfg = TrainConfig(side="q", batch_size=a.batch, steps=a.steps, workers=a.workers, checkpoint_every=10**9)
    tr = train(a.work / "m0", a.work / "kfeats", a.work / "aug", a.work / "m1", cfg, progress=False)
    res["train_s_per_step"] = tr.seconds_per_step
    res["train_gist_cache_and_setup_s"] = round(tr.seconds - tr.seconds_per_step * a.steps, 2)

    d = describe(a.work / "m1", "q", a.work / "aug", a.work / "queries.h5", batch=a.batch, workers=a.workers, progress=False)
    res["describe_images_per_s"] = round(d.descriptors / d.seconds, 1)

    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
