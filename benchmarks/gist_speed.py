"""GIST throughput, with decoding excluded (1 and 2 processes) and included (the stage runner).

Decode excluded: GIST 960 on a uint8 N x 32 x 32 x 3 array (random crops of scikit-image's
bundled photos). Decode included: the per-image stage runner (`isc_qk.stages.runner`, what
`gist-pca` runs) on JPEG files with 1 and 2 decode workers (processes for GIST), either written to a temporary
folder from the same photos (about ISC-sized, 640 px on the long side) or taken from
``--images DIR``.

    python benchmarks/gist_speed.py [--images DIR] [--n 4096] [--files 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from isc_qk.gist.descriptor import compute_gist, gist_descriptors


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry()]


def make_array(n: int, seed: int = 0) -> np.ndarray:
    """n random 32x32 RGB crops (with random stride) of the bundled photos."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        p = photos[i % len(photos)]
        s = int(rng.integers(1, 8))
        y = int(rng.integers(0, p.shape[0] - 32 * s))
        x = int(rng.integers(0, p.shape[1] - 32 * s))
        out[i] = p[y : y + 32 * s : s, x : x + 32 * s : s, :3]
    return out


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs of random crops of the photos, resized to 640 px on the long side."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    paths = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = Image.fromarray(np.ascontiguousarray(p[y : y + ch, x : x + cw, :3]))
        scale = 640 / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
        path = folder / f"B{i:06d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def rate_array(images: np.ndarray, procs: int) -> float:
    """Images/s for raw GIST + L2 norm on `procs` processes (pool start-up not counted)."""
    if procs == 1:
        gist_descriptors(images[:32])  # warm the filter caches
        t = time.perf_counter()
        gist_descriptors(images)
        return len(images) / (time.perf_counter() - t)
    parts = np.array_split(images, procs * 8)
    with get_context("fork").Pool(procs) as pool:
        pool.map(compute_gist, [images[:32]] * procs)  # start workers, build filters
        t = time.perf_counter()
        pool.map(gist_descriptors, parts, chunksize=1)
        return len(images) / (time.perf_counter() - t)


def rate_files(paths: list[Path], threads: int, work: Path) -> tuple[float, int]:
    """Images/s for decode + preprocess + GIST + L2 through the stage runner (rows written to a
    resumable partial file, as `gist-pca` does)."""
    from isc_qk.encoders import create
    from isc_qk.formats.images import ImageFile
    from isc_qk.stages.artifact import Artifact
    from isc_qk.stages.runner import fill_from_images
    from isc_qk.starts.stage import CHUNK, RawJob

    files = [ImageFile(p.stem, p) for p in paths]
    art = Artifact(work / f"bench-{threads}", "benchmark rows")
    art.discard_scratch()
    t = time.perf_counter()
    filled = fill_from_images(art, files, RawJob(create("gist")), CHUNK, threads)
    rate = len(paths) / (time.perf_counter() - t)
    art.discard_scratch()
    return rate, len(filled.bad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="folder of images for the decode-included run")
    ap.add_argument("--n", type=int, default=4096, help="images for the decode-excluded run")
    ap.add_argument("--files", type=int, default=400, help="max files for the decode-included run")
    args = ap.parse_args()

    images = make_array(args.n)
    for procs in (1, 2):
        print(f"decode excluded, {procs} process(es): {rate_array(images, procs):8.0f} images/s")

    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            suffixes = {".jpg", ".jpeg", ".png"}
            paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in suffixes)[: args.files]
            source = str(args.images)
        else:
            paths = make_jpegs(Path(tmp), args.files)
            source = "skimage photos, 640 px JPEGs"
        for threads in (1, 2):
            rate, bad = rate_files(paths, threads, Path(tmp))
            print(f"decode included ({len(paths)} files from {source}), {threads} decode worker(s): "
                  f"{rate:8.0f} images/s ({bad} unreadable)")


if __name__ == "__main__":
    main()
