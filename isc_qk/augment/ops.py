"""The AugLy edits that need more than one AugLy call: context, bundled assets, op functions.

Every op function has the signature ``fn(image, params, ctx) -> image``. `params` is the
caller's own copy of one sampled edit: an op records in it what it really used where that
can differ from what was sampled (an unreadable "other image" replaced by the next readable
one), so the manifest holds exactly what replays the edit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import augly.image as imaugs
import augly.utils as augly_utils
from PIL import Image

from ..errors import UserError
from ..formats.images import BadImage, ImageFile, load_rgb


class Context:
    """What sampling and applying need to know about the folder (for 'another image' ops).

    One Context per folder; `at(source_id)` gives the view for one source image (so nothing
    shared is ever modified while a query is made).
    """

    def __init__(self, images: Sequence[ImageFile], max_side: int = 512, source_id: str = "") -> None:
        self.ids = [f.id for f in images]
        self.paths = [f.path for f in images]
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.max_side = max_side
        self.source_id = source_id

    def at(self, source_id: str) -> "Context":
        view = object.__new__(Context)
        view.__dict__.update(self.__dict__, source_id=source_id)
        return view

    def load_other(self, other_id: str | None) -> tuple[Image.Image | None, str | None]:
        """Load `other_id`; if it is unreadable, the next readable image of the folder.

        Deterministic (the folder order is fixed) and never the source image itself; returns
        (None, None) when no other image can be read, and callers then use a mirrored source.
        """
        if other_id is None or other_id not in self.index:
            return None, None
        n = len(self.ids)
        start = self.index[other_id]
        for step in range(n):
            j = (start + step) % n
            if self.ids[j] == self.source_id:
                continue
            try:
                return fit_long_side(load_rgb(self.paths[j]), self.max_side), self.ids[j]
            except BadImage:
                continue
        return None, None


def fit_long_side(im: Image.Image, max_side: int) -> Image.Image:
    """Shrink (never enlarge) so that the long side is <= max_side."""
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    s = max_side / max(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


# =========================================================================== bundled assets
@cache
def emoji_names() -> tuple[str, ...]:
    """Twemoji PNGs shipped in the AugLy wheel, as paths relative to its emoji folder."""
    root = Path(augly_utils.EMOJI_DIR)
    names = tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")))
    if not names:
        raise UserError(f"{root}: AugLy's bundled emoji are missing; reinstall augly")
    return names


@cache
def text_fonts() -> tuple[str, ...]:
    """Bundled fonts usable by overlay_text (it needs the font's .pkl character list)."""
    root = Path(augly_utils.FONTS_DIR)
    names = tuple(sorted(p.name for p in root.glob("*.ttf") if p.with_suffix(".pkl").is_file()))
    if not names:
        raise UserError(f"{root}: AugLy's bundled fonts are missing; reinstall augly")
    return names


MEME_TEXTS = ("LOL", "OMG", "WOW", "NOPE", "ME IRL", "SO TRUE", "WAIT FOR IT", "MONDAYS", "WHY", "YES")
SCREENSHOT_TEMPLATES = ("web.png", "mobile.png")


# =========================================================================== op implementations
def rgb(c: Sequence[int]) -> tuple[int, int, int]:
    return (int(c[0]), int(c[1]), int(c[2]))


def op_overlay_other(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    other, used = ctx.load_other(p["other"])
    p["other"] = used
    if other is None:
        other = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return imaugs.overlay_image(im, overlay=other, overlay_size=p["overlay_size"], opacity=p["opacity"],
                                x_pos=p["x_pos"], y_pos=p["y_pos"])


def op_onto_background(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    bg, used = ctx.load_other(p["background"])
    p["background"] = used
    if bg is None:
        bg = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return imaugs.overlay_onto_background_image(im, background_image=bg, overlay_size=p["overlay_size"],
                                                x_pos=p["x_pos"], y_pos=p["y_pos"], scale_bg=p["scale_bg"])


def op_perspective(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    sigma = p["sigma_frac"] * min(im.size)
    return imaugs.perspective_transform(im, sigma=sigma, seed=p["seed"])


def op_meme(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    caption = max(24, int(p["caption_frac"] * im.height))
    # AugLy shrinks the font in steps of 5 until the text fits; make sure it can fit.
    im = im if im.width >= 64 else im.resize((64, max(1, round(im.height * 64 / im.width))), Image.BICUBIC)
    return imaugs.meme_format(im, text=p["text"], caption_height=caption, text_color=rgb(p["text_color"]),
                              meme_bg_color=rgb(p["bg_color"]))


def op_text(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    font = os.path.join(augly_utils.FONTS_DIR, p["font"])

    def draw() -> Image.Image:
        return imaugs.overlay_text(im, text=p["text"], font_file=font, font_size=p["font_size"],
                                   opacity=p["opacity"], color=rgb(p["color"]), x_pos=p["x_pos"], y_pos=p["y_pos"])

    try:
        return draw()
    except RuntimeError:  # Pillow's raqm engine rejects a few font/character pairs: use the basic one
        with _basic_text_layout():
            return draw()


@contextlib.contextmanager
def _basic_text_layout():
    """Make ImageFont.truetype use Pillow's built-in (non-raqm) layout engine for a moment."""
    from PIL import ImageFont

    original = ImageFont.truetype

    def truetype(*args, **kwargs):
        kwargs.setdefault("layout_engine", ImageFont.Layout.BASIC)
        return original(*args, **kwargs)

    ImageFont.truetype = truetype
    try:
        yield
    finally:
        ImageFont.truetype = original


def op_emoji(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    path = os.path.join(augly_utils.EMOJI_DIR, p["emoji"])
    return imaugs.overlay_emoji(im, emoji_path=path, emoji_size=p["emoji_size"], opacity=p["opacity"],
                                x_pos=p["x_pos"], y_pos=p["y_pos"])


def op_screenshot(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    template = os.path.join(augly_utils.SCREENSHOT_TEMPLATES_DIR, p["template"])
    return imaugs.overlay_onto_screenshot(im, template_filepath=template, crop_src_to_fit=p["crop_src_to_fit"])
