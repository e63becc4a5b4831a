"""Making one query: sample its edits (the recipe), apply them in order, keep the size sane."""

from __future__ import annotations

from PIL import Image

from .ops import Context, fit_long_side
from .recipe import MIN_SIDE, OPS, sample_edits


def keep_min_side(im: Image.Image) -> Image.Image:
    """Enlarge an image whose short side fell below MIN_SIDE (text and meme ops need room)."""
    w, h = im.size
    if min(w, h) >= MIN_SIDE:
        return im
    s = MIN_SIDE / max(1, min(w, h))  # an op may return an empty image
    return im.resize((max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s))), Image.BICUBIC)


def apply_edits(im: Image.Image, edits: list[dict], ctx: Context) -> tuple[Image.Image, list[dict]]:
    """Apply edits in order; returns the image and the edits as applied (an op records in its
    own copy what it really used, e.g. the other image); `edits` itself is left unchanged."""
    applied = []
    for e in edits:
        params = dict(e)
        im = keep_min_side(OPS[e["op"]].fn(im, params, ctx).convert("RGB"))
        applied.append(params)
    return im, applied


def augment_image(im: Image.Image, source_id: str, copy: int, seed: int, ctx: Context) -> tuple[Image.Image, list[dict]]:
    """One query: (edited image, edits with their parameters) for copy `copy` of `source_id`."""
    ctx = ctx.at(source_id)
    edits = sample_edits(seed, source_id, copy, ctx)
    out, applied = apply_edits(fit_long_side(im.convert("RGB"), ctx.max_side), edits, ctx)
    return fit_long_side(out, ctx.max_side), applied
