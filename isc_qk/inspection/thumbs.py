"""Thumbnails of the images a report shows, and only those (never the full images).

Files are found by id (``ID.jpg``, ``.jpeg``, ``.png`` in any case) without listing the folder,
so a report on a million references reads a few hundred files. Each thumbnail is a small JPEG
written atomically under ``thumbs/q/`` or ``thumbs/r/`` beside the page; an id that is not a
safe file name gets a hashed one. A missing or unreadable image gets the shared placeholder
``thumbs/missing.png``, written when needed (the page still loads every image), and is listed
in the report.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..formats.atomic import atomic_path
from ..formats.ids import IMAGE_SUFFIXES

THUMBS = "thumbs"
PLACEHOLDER = f"{THUMBS}/missing.png"
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,100}$")


def thumb_name(kind: str, image_id: str) -> str:
    """The page-relative path of an image's thumbnail (``thumbs/q/Q00001.jpg``)."""
    stem = image_id if _SAFE.match(image_id) else "h" + hashlib.sha1(image_id.encode()).hexdigest()[:20]
    return f"{THUMBS}/{kind}/{stem}.jpg"


def find_image(folder: Path, image_id: str) -> Path | None:
    """The file of `image_id` in `folder` (id = file stem), without listing the folder."""
    for suffix in IMAGE_SUFFIXES:
        for s in (suffix, suffix.upper()):
            p = folder / f"{image_id}{s}"
            if p.is_file():
                return p
    return None


def _thumbnail(src: Path, dst: Path, size: int) -> None:
    from PIL import Image, ImageOps

    from ..formats.images import to_rgb8

    with Image.open(src) as im:
        im.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale (much faster)
        im.load()
        im = to_rgb8(ImageOps.exif_transpose(im))
        im.thumbnail((size, size), Image.BILINEAR)
        with atomic_path(dst) as tmp:
            im.save(tmp, format="JPEG", quality=85)


def write_placeholder(out_dir: Path, size: int) -> None:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(im)
    draw.line([(0, 0), (size - 1, size - 1)], fill=(200, 80, 80), width=2)
    draw.line([(0, size - 1), (size - 1, 0)], fill=(200, 80, 80), width=2)
    draw.text((8, 8), "no image", fill=(90, 90, 90))
    with atomic_path(out_dir / PLACEHOLDER) as tmp:
        im.save(tmp, format="PNG")


def make_thumbnails(wanted: Iterable[tuple[str, str]], folders: dict[str, Path], out_dir: Path, size: int,
                    workers: int = 2) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Thumbnails of (kind, id) pairs (kind q or r, from folders[kind]) under `out_dir`.

    Returns {(kind, id): page-relative path} (the placeholder for failures) and the failures.
    """
    jobs = sorted(set(wanted))
    failures: list[str] = []
    paths: dict[tuple[str, str], str] = {}

    def one(job: tuple[str, str]) -> tuple[tuple[str, str], str, str | None]:
        kind, image_id = job
        src = find_image(folders[kind], image_id)
        if src is None:
            return job, PLACEHOLDER, f"{folders[kind]}/{image_id}: no .jpg/.jpeg/.png file with this id"
        rel = thumb_name(kind, image_id)
        try:
            _thumbnail(src, out_dir / rel, size)
        except Exception as e:  # Pillow raises many types for a bad file
            msg = str(e).splitlines()[0] if str(e) else "unreadable"
            return job, PLACEHOLDER, f"{src}: {type(e).__name__}: {msg[:160]}"
        return job, rel, None

    (out_dir / THUMBS).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for job, rel, why in pool.map(one, jobs):
            paths[job] = rel
            if why:
                failures.append(why)
    if failures:
        write_placeholder(out_dir, size)
    return paths, failures


def remove_stale(out_dir: Path, old: Iterable[str], keep: set[str]) -> None:
    """Delete thumbnails an earlier report wrote (`old`, page-relative) that this one no longer
    shows; files this tool did not list are never touched."""
    for rel in old:
        if rel in keep or not rel.startswith(f"{THUMBS}/") or ".." in rel.split("/"):
            continue
        p = out_dir / rel
        if p.is_file():
            os.unlink(p)
