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
from .ids import IMAGE_SUFFIXES, OTHER_IMAGE_SUFFIXES, check_ids, image_id

#: Longest / shortest side beyond which a picture is refused as unreadable (a 1 x 20000 strip):
#: no edit, crop or resize of it is meaningful, and edits that use it as "another image" break
MAX_ASPECT = 50


@dataclass(frozen=True)
class ImageFile:
    id: str
    path: Path


def list_images(folder: str | os.PathLike) -> list[ImageFile]:
    """All image files of a folder (not recursive), sorted by id so every run sees one order.

    Ids are written to every output file and read back, so file names that would not come
    back unchanged (non-ASCII, a newline, a trailing space, ``x.jpg.png``...) and two files with
    one id (``x.jpg`` and ``x.png``) are refused here, all named, before any work is done.
    Files in other image formats (.tif, .webp...) are not read; a warning lists them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: {_not_a_folder(folder)}")
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise UserError(f"{folder}: cannot list the folder ({e.strerror})") from None
    files = [
        ImageFile(image_id(p.name), p)
        for p in entries
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    _warn_other_formats(folder, entries)
    if not files:
        raise UserError(f"{folder}: no .jpg/.jpeg/.png images found")
    files.sort(key=lambda f: f.id)
    check_ids([f.id for f in files], str(folder), names=[repr(f.path.name) for f in files])
    return files


def _not_a_folder(folder: Path) -> str:
    """Why `folder` is not a folder we can read, in words."""
    if folder.is_symlink() and not folder.exists():
        return f"a broken symbolic link (to {os.readlink(folder)})"
    try:
        folder.stat()
    except PermissionError:
        return "cannot be read (permission denied on a folder above it)"
    except OSError:
        return "image folder not found"
    return "is a file, not an image folder"


_WARNED: set[str] = set()


def _warn_other_formats(folder: Path, entries: list[Path]) -> None:
    """One warning per folder and process: images in formats the tool does not read."""
    other = sorted(p.name for p in entries if p.suffix.lower() in OTHER_IMAGE_SUFFIXES and not p.name.startswith("."))
    key = os.path.abspath(folder)
    if other and key not in _WARNED:
        from ..ui import warn

        _WARNED.add(key)
        shown = ", ".join(other[:5]) + (f" ... ({len(other)} in all)" if len(other) > 5 else "")
        warn(f"{folder}: {len(other)} image file(s) in a format isc-qk does not read (only .jpg/.jpeg/.png) are "
             f"left out: {shown}; convert them to .jpg or .png to use them")


class BadImage(Exception):
    """An image file that cannot be decoded (empty, truncated, not an image, too large)."""


def load_rgb(path: str | os.PathLike):
    """Decode a file into an 8-bit RGB PIL image upright (EXIF orientation applied).

    Raises BadImage with a short reason for anything that cannot be decoded.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            w, h = im.size
            if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
                raise BadImage(f"{path}: {w} x {h} px: too thin to be a picture (sides over {MAX_ASPECT}:1)")
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb8(im)
    except BadImage:
        raise
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
