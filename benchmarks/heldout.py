"""Build a HARDER held-out benchmark from a DISC-layout folder, to choose training settings on.

Why: off-the-shelf SSCD already scores ~0.97 micro-AP on ../shared/minidisc, so its queries
barely separate a recipe that generalises from one that over-fits the training edits. This
script holds out part of train/ (never trained on) and makes new queries from it with edits
the training recipe does not produce, or produces one at a time:

* ``stronger``: two independent draws of the training recipe applied one after the other
  (chains of up to four edits, e.g. a crop of a meme of a rotated, blurred copy);
* ``unseen``: edit families outside the training recipe (PIL filters such as emboss and
  contour, posterise / solarise / extreme contrast, skew, 90-degree rotations, opacity over a
  plain background, tight crops of 35-55 % of the side), one or two per query, then one
  training-recipe edit.

Layout written (DISC21's): train/ (the source's train minus the held-out images),
references/ (half of the held-out images), queries/ (one edited copy of every reference, and
as many edited distractors from the other half), ground_truth.csv. Then, e.g.:

    python benchmarks/heldout.py --source ../shared/minidisc --out runs/heldout_unseen --kind unseen
    isc-qk pipeline --data runs/heldout_unseen --work runs/ho_sscd --recipe sscd --normalize nes,whiten

Deterministic for a given --seed; images are copied (the source is only read).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isc_qk.augment.apply import augment_image  # noqa: E402
from isc_qk.augment.ops import Context, fit_long_side  # noqa: E402
from isc_qk.formats import write_ground_truth  # noqa: E402
from isc_qk.formats.images import list_images, load_rgb  # noqa: E402


def _tight_crop(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    f = rng.uniform(0.35, 0.55)
    cw, ch = max(32, int(w * f)), max(32, int(h * f))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((x, y, x + cw, y + ch))


def _skew(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    k = rng.uniform(-0.5, 0.5)
    w, h = im.size
    return im.transform((w + int(abs(k) * h), h), Image.AFFINE, (1, k, -abs(k) * h if k > 0 else 0, 0, 1, 0),
                        resample=Image.BILINEAR, fillcolor=tuple(int(c) for c in rng.integers(0, 256, 3)))


def _opacity(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    bg = Image.new("RGB", im.size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    return Image.blend(bg, im, float(rng.uniform(0.3, 0.6)))


UNSEEN = {
    "emboss": lambda im, rng: im.filter(ImageFilter.EMBOSS),
    "contour": lambda im, rng: im.filter(ImageFilter.CONTOUR),
    "edges": lambda im, rng: ImageOps.invert(im.filter(ImageFilter.FIND_EDGES)),
    "posterize": lambda im, rng: ImageOps.posterize(im, int(rng.integers(1, 3))),
    "solarize": lambda im, rng: ImageOps.solarize(im, int(rng.integers(64, 160))),
    "contrast": lambda im, rng: ImageOps.autocontrast(ImageOps.equalize(im), cutoff=int(rng.integers(10, 30))),
    "skew": _skew,
    "rotate90": lambda im, rng: im.rotate(int(rng.choice([90, 180, 270])), expand=True),
    "opacity": _opacity,
    "tight_crop": _tight_crop,
}


def edit(im: Image.Image, kind: str, qid: str, seed: int, ctx: Context) -> Image.Image:
    """The held-out edit of one query image (deterministic in `seed` and `qid`)."""
    rng = np.random.default_rng([seed, int(qid[1:])])
    if kind == "stronger":
        im, _ = augment_image(im, qid, 0, seed + 1, ctx)
        im, _ = augment_image(im, qid, 1, seed + 2, ctx)
        return im
    names = sorted(UNSEEN)
    for name in rng.choice(names, int(rng.integers(1, 3)), replace=False):
        im = UNSEEN[str(name)](im.convert("RGB"), rng).convert("RGB")
    im, _ = augment_image(fit_long_side(im, ctx.max_side), qid, 0, seed + 3, ctx)
    return im


def build(source: Path, out: Path, kind: str, hold: int, seed: int) -> None:
    images = list_images(source / "train")
    if hold < 4 or hold > len(images) // 2:
        raise SystemExit(f"--hold must be in 4..{len(images) // 2}")
    keep, held = images[:-hold], images[-hold:]
    refs, dis = held[: hold // 2], held[hold // 2:]
    for sub in ("train", "references", "queries"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for f in keep:
        shutil.copyfile(f.path, out / "train" / Path(f.path).name)
    order = np.random.default_rng(seed).permutation(len(refs) + len(dis))
    ctx = Context(keep)  # "other image" edits draw from the training images, never the held-out ones
    gt = []
    for qi, k in enumerate(order):
        qid = f"Q{qi:05d}"
        if k < len(refs):
            f = refs[k]
            rid = f"R{k:06d}"
            shutil.copyfile(f.path, out / "references" / f"{rid}.jpg")
            gt.append((qid, rid))
        else:
            f = dis[k - len(refs)]
            gt.append((qid, None))
        q = edit(load_rgb(f.path), kind, qid, seed, ctx.at(f.id))
        q.save(out / "queries" / f"{qid}.jpg", quality=85)
    write_ground_truth(out / "ground_truth.csv", gt)
    print(f"{out}: {len(keep)} train, {len(refs)} references, {len(order)} queries ({len(refs)} positives), {kind} edits")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="DISC-layout folder (its train/ is used)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kind", choices=("stronger", "unseen"), default="unseen")
    ap.add_argument("--hold", type=int, default=500, help="train images held out (half references, half distractors)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from isc_qk.augment import shims

    shims.apply()  # AugLy on current numpy / Pillow (as every augment worker does)
    if a.out.exists() and any(a.out.iterdir()):
        raise SystemExit(f"{a.out} exists and is not empty")
    build(a.source, a.out, a.kind, a.hold, a.seed)


if __name__ == "__main__":
    main()
