"""Augmentation throughput: queries/s of `augment_folder` with 1 and 2 worker processes.

    python benchmarks/augment_speed.py [--images DIR] [--n 100] [--workers 1 2] [--out result.json]

Uses the first N images of DIR (e.g. /work/shared/minidisc/train), or N generated photo crops
(384 px, ISC-like) when no folder is given. Each run starts from an empty output folder, so
the time includes process start-up, decoding, the edits, JPEG encoding and the manifest.
Also checks that every worker count wrote byte-identical outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _make_images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
        y, x = rng.integers(0, h - ch), rng.integers(0, w - cw)
        im = Image.fromarray(np.ascontiguousarray(p[y : y + ch, x : x + cw]))
        im.thumbnail((384, 384))
        im.save(folder / f"T{i:06d}.jpg", quality=90)


def _subset(src: Path, dst: Path, n: int) -> int:
    from isc_qk.formats.images import list_images

    dst.mkdir(parents=True)
    files = list_images(src)[:n]
    for f in files:
        (dst / f.path.name).symlink_to(f.path.resolve())
    return len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="image folder (default: generated crops)")
    ap.add_argument("--n", type=int, default=100, help="number of source images")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    from isc_qk.augment.runner import augment_folder
    from isc_qk.configs import AugmentConfig

    tmp = Path(tempfile.mkdtemp(prefix="augment_speed_"))
    try:
        src = tmp / "images"
        if args.images:
            n = _subset(args.images, src, args.n)
            origin = str(args.images)
        else:
            _make_images(src, args.n)
            n, origin = args.n, "generated 384-px photo crops"
        augment_folder(src, tmp / "warmup", AugmentConfig(copies=1), workers=1, progress=False)  # warm the file cache
        results, outputs = [], []
        for w in args.workers:
            out = tmp / f"out_w{w}"
            t0 = time.perf_counter()
            rep = augment_folder(src, out, AugmentConfig(seed=0, copies=args.copies), workers=w, progress=False)
            dt = time.perf_counter() - t0
            results.append({"workers": w, "queries": rep.done, "seconds": round(dt, 2),
                            "queries_per_s": round(rep.done / dt, 1)})
            outputs.append({p.name: p.read_bytes() for p in sorted(out.glob("*.jpg"))})
        identical = all(o == outputs[0] for o in outputs)
        print(f"images: {n} from {origin}, copies: {args.copies}")
        print(f"{'workers':>8} {'queries':>8} {'seconds':>8} {'queries/s':>10}")
        for r in results:
            print(f"{r['workers']:>8} {r['queries']:>8} {r['seconds']:>8.2f} {r['queries_per_s']:>10.1f}")
        print(f"outputs identical across worker counts: {identical}")
        if args.out:
            args.out.write_text(json.dumps({"images": n, "source": origin, "copies": args.copies,
                                            "results": results, "identical": identical}, indent=2) + "\n")
        if not identical:
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
