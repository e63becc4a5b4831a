"""Listing and decoding image files, with bad files reported instead of crashing the run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import IMAGE_SUFFIXES, image_id


@dataclass(frozen=True)
class ImageFile:
    id: str
    path: Path


def list_images(folder: str | os.PathLike) -> list[ImageFile]:
    """All image files of a folder (not recursive), sorted by id so every run sees one order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found")
    files = [
        ImageFile(image_id(p.name), p)
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if not files:
        raise UserError(f"{folder}: no .jpg/.jpeg/.png images found")
    files.sort(key=lambda f: f.id)
    ids = [f.id for f in files]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise UserError(f"{folder}: two files share the id {dup!r} (e.g. .jpg and .png)")
    return files


class BadImage(Exception):
    """An image file that cannot be decoded (empty, truncated, not an image)."""


def load_rgb(path: str | os.PathLike):
    """Decode a file into an RGB PIL image; raise BadImage with a short reason otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadImage(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}") from None


def load_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode and resize to size x size (bilinear), uint8 HxWx3: the CNN backbones' input."""
    from PIL import Image

    im = load_rgb(path)
    return np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
