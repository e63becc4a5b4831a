"""Image files: listing a folder and THE decoder every stage uses.

One loader, so that a picture gives the same pixels in augment, gist-pca, precompute, describe
and training, whatever its file mode: 8-bit and 16-bit greyscale, palette, alpha, CMYK, 1-bit,
and EXIF orientation all become the 8-bit RGB image a viewer would show. Files that cannot be
decoded (empty, truncated, not an image, decompression bombs) raise `BadImage` with a short
reason; stages list and skip them instead of stopping a million-image run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .ids import IMAGE_SUFFIXES, image_id


@dataclass(frozen=True)
class ImageFile:
    id: str
    path: Path


def list_images(folder: str | os.PathLike) -> list[ImageFile]:
    """All image files of a folder (not recursive), sorted by id so every run sees one order.

    Ids become ASCII strings in the ISC2021 files, so a non-ASCII file name is refused here,
    named, before any work is done.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not an image folder" if folder.exists() else "image folder not found"
        raise UserError(f"{folder}: {what}")
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise UserError(f"{folder}: cannot list the folder ({e.strerror})") from None
    files = [
        ImageFile(image_id(p.name), p)
        for p in entries
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise UserError(f"{folder}: no .jpg/.jpeg/.png images found")
    for f in files:
        if not f.id.isascii():
            raise UserError(f"{f.path}: the file name is not ASCII (ISC2021 ids are ASCII); rename it")
    files.sort(key=lambda f: f.id)
    ids = [f.id for f in files]
    if len(set(ids)) != len(ids):
        dup = next(a for a, b in zip(ids, ids[1:]) if a == b)
        raise UserError(f"{folder}: two files share the id {dup!r} (e.g. .jpg and .png)")
    return files


class BadImage(Exception):
    """An image file that cannot be decoded (empty, truncated, not an image, too large)."""


def load_rgb(path: str | os.PathLike):
    """Decode a file into an 8-bit RGB PIL image upright (EXIF orientation applied).

    Raises BadImage with a short reason for anything that cannot be decoded.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb8(im)
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError...)
        msg = str(e).splitlines()[0] if str(e) else "unreadable"
        raise BadImage(f"{path}: {type(e).__name__}: {msg[:200]}") from None


def to_rgb8(im):
    """Any Pillow mode -> 8-bit RGB: 16/32-bit integer greyscale is rescaled (not clipped to
    white), transparent pixels are composited over white (what a viewer shows)."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im)
        if im.mode.startswith("I;16"):
            a = a.astype(np.float64) / 257.0
        elif im.mode == "I":  # Pillow also uses mode I for 16-bit PNGs: infer the range from the values
            a = a.astype(np.float64) / (257.0 if a.max(initial=0) > 255 else 1.0)
        else:
            a = a.astype(np.float64) * (255.0 if a.max(initial=0) <= 1.0 else 1.0)
        grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
