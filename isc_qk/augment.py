"""ISC-style training queries: K AugLy-edited copies of every training image.

QK Iteration learns from (query, key) pairs where the key is a training image and the query
is an edited copy of it, so the edits should look like the ISC2021 queries: colour changes,
overlays (emoji, text, another image, stripes), pixel-level damage, spatial changes, and
compositions (screenshots, memes, pasted onto another photo).

Everything about the edits lives in one table, `RECIPE`: each `Op` names its family, the
AugLy function, a sampling weight and the range of every parameter. `render_recipe_markdown`
prints that table for the README, so the docs cannot drift from the code.

Determinism: the edits of copy `c` of image `i` are drawn from
`np.random.default_rng([seed, crc32(i), c])`, so they do not depend on the number of worker
processes, on the order of completion, or on the shard. The sampled parameters (rounded
before they are applied, so the manifest replays exactly) go into the manifest `ops` column.

Resumability: each output JPEG is written atomically and only then gets its manifest row;
on a re-run an output counts as done only if both exist, so Ctrl-C or a crash loses at most
the images in flight.
"""

from __future__ import annotations

import hashlib
import json
import math
import contextlib
import os
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import augly_shims

augly_shims.apply()

import augly.image as imaugs  # noqa: E402  (after the shims, on purpose)
import augly.utils as augly_utils  # noqa: E402

from .config import check_config, save_config  # noqa: E402
from .errors import UserError  # noqa: E402
from .images import BadImage, ImageFile, list_images, load_rgb  # noqa: E402
from .io import IMAGE_SUFFIXES, append_manifest_rows, atomic_path, read_manifest, write_json  # noqa: E402
from .shard import Shard  # noqa: E402

MIN_SIDE = 32  # edits never leave an image smaller than this (tiny crops break text/meme ops)
MANIFEST_NAME = "manifest"
CONFIG_NAME = "augment.config.json"
REPORT_NAME = "augment_report"


# =========================================================================== parameter specs
class Context:
    """What sampling and applying need to know about the folder (for 'another image' ops)."""

    def __init__(self, images: Sequence[ImageFile], max_side: int = 512) -> None:
        self.ids = [f.id for f in images]
        self.paths = [f.path for f in images]
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.max_side = max_side
        self.source_id = ""

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


@dataclass(frozen=True)
class Uniform:
    lo: float
    hi: float

    def sample(self, rng: np.random.Generator, ctx: Context) -> float:
        return round(float(rng.uniform(self.lo, self.hi)), 3)

    def describe(self) -> str:
        return f"uniform {self.lo:g} .. {self.hi:g}"


@dataclass(frozen=True)
class LogUniform:
    lo: float
    hi: float

    def sample(self, rng: np.random.Generator, ctx: Context) -> float:
        return round(float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))), 3)

    def describe(self) -> str:
        return f"log-uniform {self.lo:g} .. {self.hi:g}"


@dataclass(frozen=True)
class IntRange:
    lo: int
    hi: int  # inclusive

    def sample(self, rng: np.random.Generator, ctx: Context) -> int:
        return int(rng.integers(self.lo, self.hi + 1))

    def describe(self) -> str:
        return f"integer {self.lo} .. {self.hi}"


@dataclass(frozen=True)
class Choice:
    options: tuple | Callable[[], tuple]
    label: str = ""

    def values(self) -> tuple:
        return self.options() if callable(self.options) else self.options

    def sample(self, rng: np.random.Generator, ctx: Context) -> Any:
        v = self.values()
        return v[int(rng.integers(len(v)))]

    def describe(self) -> str:
        if self.label:
            return self.label.format(n=len(self.values()))
        return "one of " + ", ".join(str(o) for o in self.values())


@dataclass(frozen=True)
class Colour:
    def sample(self, rng: np.random.Generator, ctx: Context) -> list[int]:
        return [int(c) for c in rng.integers(0, 256, size=3)]

    def describe(self) -> str:
        return "random RGB"


@dataclass(frozen=True)
class Seed:
    """A seed for AugLy ops that draw their own random numbers (noise, shuffle, perspective)."""

    def sample(self, rng: np.random.Generator, ctx: Context) -> int:
        return int(rng.integers(0, 2**31 - 1))

    def describe(self) -> str:
        return "random seed"


@dataclass(frozen=True)
class TextIndices:
    """Random characters: indices into the chosen font's own character list."""

    min_len: int
    max_len: int

    def sample(self, rng: np.random.Generator, ctx: Context) -> list[int]:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        return [int(c) for c in rng.integers(0, 10_000, size=n)]

    def describe(self) -> str:
        return f"{self.min_len} .. {self.max_len} random characters of the font"


@dataclass(frozen=True)
class OtherImage:
    """Another image of the SAME input folder (full list, not the shard), never the source."""

    def sample(self, rng: np.random.Generator, ctx: Context) -> str | None:
        n = len(ctx.ids)
        if n < 2:
            return None
        j = int(rng.integers(n - 1))
        i = ctx.index.get(ctx.source_id, n)
        return ctx.ids[j if j < i else j + 1]

    def describe(self) -> str:
        return "another image of the input folder"


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
def _rgb(c: Sequence[int]) -> tuple[int, int, int]:
    return (int(c[0]), int(c[1]), int(c[2]))


def _overlay_other(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    other, used = ctx.load_other(p["other"])
    p["other"] = used
    if other is None:
        other = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return imaugs.overlay_image(im, overlay=other, overlay_size=p["overlay_size"], opacity=p["opacity"],
                                x_pos=p["x_pos"], y_pos=p["y_pos"])


def _onto_background(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    bg, used = ctx.load_other(p["background"])
    p["background"] = used
    if bg is None:
        bg = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return imaugs.overlay_onto_background_image(im, background_image=bg, overlay_size=p["overlay_size"],
                                                x_pos=p["x_pos"], y_pos=p["y_pos"], scale_bg=p["scale_bg"])


def _perspective(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    sigma = p["sigma_frac"] * min(im.size)
    return imaugs.perspective_transform(im, sigma=sigma, seed=p["seed"])


def _meme(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    caption = max(24, int(p["caption_frac"] * im.height))
    # AugLy shrinks the font in steps of 5 until the text fits; make sure it can fit.
    im = im if im.width >= 64 else im.resize((64, max(1, round(im.height * 64 / im.width))), Image.BICUBIC)
    return imaugs.meme_format(im, text=p["text"], caption_height=caption, text_color=_rgb(p["text_color"]),
                              meme_bg_color=_rgb(p["bg_color"]))


def _text(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    font = os.path.join(augly_utils.FONTS_DIR, p["font"])

    def draw() -> Image.Image:
        return imaugs.overlay_text(im, text=p["text"], font_file=font, font_size=p["font_size"],
                                   opacity=p["opacity"], color=_rgb(p["color"]), x_pos=p["x_pos"], y_pos=p["y_pos"])

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


def _emoji(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    path = os.path.join(augly_utils.EMOJI_DIR, p["emoji"])
    return imaugs.overlay_emoji(im, emoji_path=path, emoji_size=p["emoji_size"], opacity=p["opacity"],
                                x_pos=p["x_pos"], y_pos=p["y_pos"])


def _screenshot(im: Image.Image, p: dict, ctx: Context) -> Image.Image:
    template = os.path.join(augly_utils.SCREENSHOT_TEMPLATES_DIR, p["template"])
    return imaugs.overlay_onto_screenshot(im, template_filepath=template, crop_src_to_fit=p["crop_src_to_fit"])


# =========================================================================== the recipe
OpFn = Callable[[Image.Image, dict, Context], Image.Image]


@dataclass(frozen=True)
class Op:
    """One row of the recipe: an AugLy edit, how often it is drawn, its parameter ranges."""

    family: str
    name: str
    weight: float
    params: Mapping[str, Any]  # name -> parameter spec (Uniform, Choice, ...)
    fn: OpFn = field(compare=False)


U, C = Uniform, Choice
XY = {"x_pos": U(0.0, 0.7), "y_pos": U(0.0, 0.7)}

#: Number of edits composed per query and its probability.
N_EDITS_P: Mapping[int, float] = {1: 0.2, 2: 0.35, 3: 0.3, 4: 0.15}

#: THE recipe. Edits are drawn without replacement with probability proportional to weight;
#: composition edits are applied last, the others in the order drawn.
RECIPE: tuple[Op, ...] = (
    # colour
    Op("colour", "brightness", 1.0, {"factor": U(0.4, 1.8)},
       lambda im, p, c: imaugs.brightness(im, factor=p["factor"])),
    Op("colour", "saturation", 1.0, {"factor": U(0.1, 3.0)},
       lambda im, p, c: imaugs.saturation(im, factor=p["factor"])),
    Op("colour", "grayscale", 1.0, {"mode": C(("luminosity", "average"))},
       lambda im, p, c: imaugs.grayscale(im, mode=p["mode"])),
    Op("colour", "color_jitter", 1.0,
       {"brightness_factor": U(0.6, 1.4), "contrast_factor": U(0.5, 1.6), "saturation_factor": U(0.3, 2.0)},
       lambda im, p, c: imaugs.color_jitter(im, brightness_factor=p["brightness_factor"],
                                            contrast_factor=p["contrast_factor"],
                                            saturation_factor=p["saturation_factor"])),
    # overlays
    Op("overlay", "overlay_emoji", 1.5,
       {"emoji": C(emoji_names, "one of the {n} Twemoji PNGs bundled with AugLy"), "emoji_size": U(0.1, 0.45),
        "opacity": U(0.6, 1.0), **XY},
       _emoji),
    Op("overlay", "overlay_text", 1.5,
       {"text": TextIndices(3, 14),
        "font": C(text_fonts, "one of the {n} fonts bundled with AugLy (with a .pkl character list)"),
        "font_size": U(0.08, 0.25), "opacity": U(0.5, 1.0), "color": Colour(), "x_pos": U(0.0, 0.6),
        "y_pos": U(0.0, 0.85)},
       _text),
    Op("overlay", "overlay_image", 1.0,
       {"other": OtherImage(), "overlay_size": U(0.2, 0.6), "opacity": U(0.4, 1.0), **XY},
       _overlay_other),
    Op("overlay", "overlay_stripes", 1.0,
       {"line_width": U(0.05, 0.6), "line_color": Colour(), "line_angle": U(-90.0, 90.0),
        "line_density": U(0.1, 0.8), "line_type": C(("solid", "dotted", "dashed")), "line_opacity": U(0.3, 1.0)},
       lambda im, p, c: imaugs.overlay_stripes(im, line_width=p["line_width"], line_color=_rgb(p["line_color"]),
                                               line_angle=p["line_angle"], line_density=p["line_density"],
                                               line_type=p["line_type"], line_opacity=p["line_opacity"])),
    # pixel level
    Op("pixel", "blur", 1.0, {"radius": U(1.0, 5.0)},
       lambda im, p, c: imaugs.blur(im, radius=p["radius"])),
    Op("pixel", "encoding_quality", 1.0, {"quality": IntRange(5, 40)},
       lambda im, p, c: imaugs.encoding_quality(im, quality=p["quality"])),
    Op("pixel", "pixelization", 1.0, {"ratio": U(0.15, 0.6)},
       lambda im, p, c: imaugs.pixelization(im, ratio=p["ratio"])),
    Op("pixel", "random_noise", 1.0, {"var": U(0.005, 0.06), "seed": Seed()},
       lambda im, p, c: imaugs.random_noise(im, var=p["var"], seed=p["seed"])),
    Op("pixel", "shuffle_pixels", 0.5, {"factor": U(0.05, 0.35), "seed": Seed()},
       lambda im, p, c: imaugs.shuffle_pixels(im, factor=p["factor"], seed=p["seed"])),
    Op("pixel", "sharpen", 0.5, {"factor": U(2.0, 20.0)},
       lambda im, p, c: imaugs.sharpen(im, factor=p["factor"])),
    # spatial
    Op("spatial", "crop", 1.5, {"x1": U(0.0, 0.3), "y1": U(0.0, 0.3), "x2": U(0.7, 1.0), "y2": U(0.7, 1.0)},
       lambda im, p, c: imaugs.crop(im, x1=p["x1"], y1=p["y1"], x2=p["x2"], y2=p["y2"])),
    Op("spatial", "hflip", 1.0, {},
       lambda im, p, c: imaugs.hflip(im)),
    Op("spatial", "vflip", 0.5, {},
       lambda im, p, c: imaugs.vflip(im)),
    Op("spatial", "rotate", 1.0, {"degrees": U(-60.0, 60.0)},
       lambda im, p, c: imaugs.rotate(im, degrees=p["degrees"])),
    Op("spatial", "perspective_transform", 1.0, {"sigma_frac": U(0.02, 0.12), "seed": Seed()},
       _perspective),
    Op("spatial", "pad", 1.0, {"w_factor": U(0.05, 0.4), "h_factor": U(0.05, 0.4), "color": Colour()},
       lambda im, p, c: imaugs.pad(im, w_factor=p["w_factor"], h_factor=p["h_factor"], color=_rgb(p["color"]))),
    Op("spatial", "change_aspect_ratio", 1.0, {"ratio": LogUniform(0.5, 2.0)},
       lambda im, p, c: imaugs.change_aspect_ratio(im, ratio=p["ratio"])),
    Op("spatial", "scale", 1.0, {"factor": U(0.3, 1.0)},
       lambda im, p, c: imaugs.scale(im, factor=p["factor"])),
    # composition
    Op("composition", "overlay_onto_screenshot", 0.75,
       {"template": C(SCREENSHOT_TEMPLATES), "crop_src_to_fit": C((False, True))},
       _screenshot),
    Op("composition", "meme_format", 0.75,
       {"text": C(MEME_TEXTS), "caption_frac": U(0.12, 0.3), "text_color": Colour(), "bg_color": Colour()},
       _meme),
    Op("composition", "overlay_onto_background_image", 1.0,
       {"background": OtherImage(), "overlay_size": U(0.35, 0.85), **XY, "scale_bg": C((False, True))},
       _onto_background),
)
del U, C

OPS: Mapping[str, Op] = {op.name: op for op in RECIPE}
assert len(OPS) == len(RECIPE), "recipe op names must be unique"


def render_recipe_markdown() -> str:
    """The recipe as a markdown table (pasted into the README; printed by `isc-qk augment-recipe`)."""
    total = sum(op.weight for op in RECIPE)
    n_edits = ", ".join(f"{n}: {p:.0%}" for n, p in N_EDITS_P.items())
    lines = [
        f"Each query composes N distinct edits, P(N) = {n_edits}; edits are drawn without replacement "
        "with probability proportional to their weight (share = weight / total for the first draw); "
        "composition edits are applied last. Images are first shrunk to long side <= max_side, "
        f"kept >= {MIN_SIDE} px on the short side after every edit, and shrunk again at the end.",
        "",
        "| family | AugLy op | weight | share | parameters |",
        "|---|---|---|---|---|",
    ]
    for op in RECIPE:
        params = "; ".join(f"`{k}`: {spec.describe()}" for k, spec in op.params.items()) or "-"
        lines.append(f"| {op.family} | `{op.name}` | {op.weight:g} | {op.weight / total:.1%} | {params} |")
    return "\n".join(lines) + "\n"


def recipe_fingerprint() -> str:
    """Short hash of the recipe table: resuming with a changed recipe is refused."""
    return hashlib.sha256(render_recipe_markdown().encode()).hexdigest()[:12]


# =========================================================================== sampling and applying
def stable_hash(text: str) -> int:
    """A process-independent hash of an id (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def query_id(source_id: str, copy: int) -> str:
    """Output id of copy `copy` of `source_id`: keeps the link to the source visible."""
    return f"{source_id}_a{copy}"


def sample_edits(seed: int, source_id: str, copy: int, ctx: Context) -> list[dict]:
    """Draw the edits for one query; the same (seed, source_id, copy) always gives the same list."""
    rng = np.random.default_rng([seed, stable_hash(source_id), copy])
    ctx.source_id = source_id
    counts = np.array(list(N_EDITS_P), dtype=int)
    p_counts = np.array(list(N_EDITS_P.values()), dtype=float)
    n = int(counts[rng.choice(len(counts), p=p_counts / p_counts.sum())])
    weights = np.array([op.weight for op in RECIPE], dtype=float)
    picks = rng.choice(len(RECIPE), size=n, replace=False, p=weights / weights.sum())
    edits = []
    for i in picks:
        op = RECIPE[int(i)]
        edits.append({"op": op.name, **{k: spec.sample(rng, ctx) for k, spec in op.params.items()}})
    edits.sort(key=lambda e: OPS[e["op"]].family == "composition")  # stable: others keep draw order
    return edits


def fit_long_side(im: Image.Image, max_side: int) -> Image.Image:
    """Shrink (never enlarge) so that the long side is <= max_side."""
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    s = max_side / max(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def _keep_min_side(im: Image.Image) -> Image.Image:
    w, h = im.size
    if min(w, h) >= MIN_SIDE:
        return im
    s = MIN_SIDE / min(w, h)
    return im.resize((max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s))), Image.BICUBIC)


def apply_edits(im: Image.Image, edits: list[dict], ctx: Context) -> Image.Image:
    """Apply sampled edits in order. An op may record what it really used (e.g. the other image)."""
    for e in edits:
        im = OPS[e["op"]].fn(im, e, ctx).convert("RGB")
        im = _keep_min_side(im)
    return im


def augment_image(
    im: Image.Image, source_id: str, copy: int, seed: int, ctx: Context
) -> tuple[Image.Image, list[dict]]:
    """One query: (edited image, edits with their parameters) for copy `copy` of `source_id`."""
    edits = sample_edits(seed, source_id, copy, ctx)
    out = apply_edits(fit_long_side(im.convert("RGB"), ctx.max_side), edits, ctx)
    return fit_long_side(out, ctx.max_side), edits


# =========================================================================== runner
@dataclass(frozen=True)
class AugmentConfig:
    """Settings that determine the outputs (saved as OUT_DIR/augment.config.json)."""

    seed: int = 0
    copies: int = 1
    max_side: int = 512
    jpeg_quality: int = 90
    recipe: str = ""  # recipe_fingerprint()


@dataclass
class AugmentReport:
    images: int  # source images in this run (this shard)
    copies: int
    done: int  # queries written by this run
    skipped_existing: int  # queries already there (file + manifest row)
    failed: list[tuple[str, str]]  # (file, reason): unreadable inputs or edits that raised
    ignored: list[str]  # files of the folder without an image suffix
    out_dir: str
    manifest: str
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def check(self, strict: bool) -> None:
        """Raise AugmentFailed when nothing could be done, or with --strict when anything failed."""
        if not self.failed:
            return
        if self.done + self.skipped_existing == 0:
            raise AugmentFailed(self, f"none of the {self.images} images could be augmented "
                                      f"({len(self.failed)} failed, e.g. {self.failed[0][1]})")
        if strict:
            raise AugmentFailed(self, f"{len(self.failed)} of {self.images} images failed (--strict), "
                                      f"e.g. {self.failed[0][1]}")


class AugmentFailed(UserError):
    """A run that finished but must exit non-zero; carries its report for printing."""

    def __init__(self, report: AugmentReport, message: str) -> None:
        super().__init__(message)
        self.report = report


_WORKER: dict[str, Any] = {}


def _init_worker(images_dir: str, out_dir: str, cfg: AugmentConfig, images: Sequence[ImageFile] | None = None,
                 ignore_sigint: bool = True) -> None:
    """Per-process state: the full folder list (for 'another image' ops) and the settings."""
    if ignore_sigint:  # the parent handles Ctrl-C and stops the pool
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(ctx=Context(images if images is not None else list_images(images_dir), cfg.max_side),
                   out_dir=Path(out_dir), cfg=cfg)


def _work(source_id: str, path: str, copies: Sequence[int]) -> tuple[str, list[tuple[str, str, str]], str | None]:
    """Write the requested copies of one source image; returns manifest rows or a failure."""
    ctx: Context = _WORKER["ctx"]
    cfg: AugmentConfig = _WORKER["cfg"]
    out_dir: Path = _WORKER["out_dir"]
    try:
        src = load_rgb(path)
    except BadImage as e:
        return source_id, [], f"unreadable: {e}"
    rows = []
    for c in copies:
        qid = query_id(source_id, c)
        try:
            im, edits = augment_image(src, source_id, c, cfg.seed, ctx)
        except Exception as e:  # a bad edit on one image must not stop a million-image run
            return source_id, rows, f"{path}: edit failed for {qid}: {type(e).__name__}: {e}"
        with atomic_path(out_dir / f"{qid}.jpg") as tmp:
            im.save(tmp, format="JPEG", quality=cfg.jpeg_quality)
        rows.append((qid, source_id, json.dumps(edits, separators=(",", ":"))))
    return source_id, rows, None


def _valid_row(row: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    if wanted.get(row["query_id"]) != row["source_id"]:
        return False
    try:
        return isinstance(json.loads(row["ops"]), list)
    except json.JSONDecodeError:
        return False


def _rewrite_manifest(path: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    with atomic_path(path) as tmp:
        append_manifest_rows(tmp, rows)


def _trusted_rows(manifest: Path, out_dir: Path, wanted: Mapping[str, str]) -> dict[str, tuple[str, str, str]]:
    """Manifest rows (by query id) that belong to this run and whose output JPEG exists.

    A truncated last line, duplicates, rows of other shards and rows whose JPEG is missing
    are left out; the caller rewrites the manifest to exactly these rows so that appending
    new rows afterwards leaves a clean CSV.
    """
    if not manifest.exists():
        return {}
    rows: dict[str, tuple[str, str, str]] = {}
    for r in read_manifest(manifest):
        if _valid_row(r, wanted) and (out_dir / f"{r['query_id']}.jpg").is_file():
            rows[r["query_id"]] = (r["query_id"], r["source_id"], r["ops"])
    return rows


def _remove_stale_temps(out_dir: Path, qids: set[str]) -> None:
    """Temp files left by a killed run of THIS shard (other shards may be writing theirs)."""
    pat = re.compile(r"^\.(.+)\.jpg\..*\.tmp$")
    for p in out_dir.glob(".*.jpg.*.tmp"):
        m = pat.match(p.name)
        if m and m.group(1) in qids:
            p.unlink(missing_ok=True)


def _list_ignored(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES)


class _NoProgress:
    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *a: object, **k: object) -> int:
        return 0

    def advance(self, *a: object, **k: object) -> None:
        return None


def augment_folder(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    copies: int = 1,
    workers: int = 1,
    shard: Shard | str | None = None,
    strict: bool = False,
    progress: bool = True,
    max_side: int = 512,
    jpeg_quality: int = 90,
) -> AugmentReport:
    """Write `copies` edited JPEGs per image of `images_dir` into `out_dir`, plus a manifest.

    Resumable and deterministic (see the module docstring). Unreadable images are reported in
    the returned report and skipped; `AugmentFailed` is raised (after finishing the rest) when
    nothing could be done, or when `strict` and anything failed.
    """
    if copies < 1:
        raise UserError(f"--copies must be >= 1, got {copies}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if max_side < MIN_SIDE:
        raise UserError(f"--max-side must be >= {MIN_SIDE}, got {max_side}")
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"--quality must be in 1..100, got {jpeg_quality}")
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    t0 = time.perf_counter()
    images = list_images(images_dir)
    if out_dir.exists() and out_dir.resolve() == images_dir.resolve():
        raise UserError(f"{out_dir}: the output folder must differ from the image folder")
    mine = shard.select(images)
    cfg = AugmentConfig(seed, copies, max_side, jpeg_quality, recipe_fingerprint())
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / CONFIG_NAME
    # More (or fewer) copies extend the same experiment: copy c's edit does not depend on K.
    check_config(cfg_path, cfg, "augmentation", ignore=("copies",))
    save_config(cfg_path, cfg, "augmentation")
    report_path = out_dir / f"{REPORT_NAME}{shard.suffix()}.json"
    report_path.unlink(missing_ok=True)  # present only after a finished run (merge checks it)

    wanted = {query_id(f.id, c): f.id for f in mine for c in range(copies)}
    manifest = out_dir / f"{MANIFEST_NAME}{shard.suffix()}.csv"
    trusted = _trusted_rows(manifest, out_dir, wanted)
    if manifest.exists():
        _rewrite_manifest(manifest, list(trusted.values()))
    _remove_stale_temps(out_dir, set(wanted))
    tasks = []
    for f in mine:
        todo = [c for c in range(copies) if query_id(f.id, c) not in trusted]
        if todo:
            tasks.append((f.id, str(f.path), todo))
    skipped = len(trusted)

    failed: list[tuple[str, str]] = []
    done = 0
    bar = progress_bar_or_none(progress)
    with bar:
        task = bar.add_task("augment", total=len(wanted), completed=skipped)

        def handle(result: tuple[str, list[tuple[str, str, str]], str | None], path: str, n: int) -> None:
            nonlocal done
            _, rows, error = result
            if rows:
                append_manifest_rows(manifest, rows)
                done += len(rows)
            if error:
                failed.append((path, error))
            bar.advance(task, n)

        if workers == 1 or len(tasks) <= 1:
            _init_worker(str(images_dir), str(out_dir), cfg, images, ignore_sigint=False)
            try:
                for sid, path, todo in tasks:
                    handle(_work(sid, path, todo), path, len(todo))
            finally:
                _WORKER.clear()
        else:
            _run_pool(tasks, workers, images_dir, out_dir, cfg, handle)

    final = _trusted_rows(manifest, out_dir, wanted)
    _rewrite_manifest(manifest, [final[q] for q in sorted(final)])
    report = AugmentReport(
        images=len(mine), copies=copies, done=done, skipped_existing=skipped, failed=failed,
        ignored=_list_ignored(images_dir), out_dir=str(out_dir), manifest=str(manifest),
        seconds=round(time.perf_counter() - t0, 3),
    )
    write_json(report_path, {**asdict(report), "images_per_s": report.images_per_s, "shard": shard.suffix()})
    report.check(strict)
    return report


def progress_bar_or_none(progress: bool):
    if not progress:
        return _NoProgress()
    from .progress import progress_bar

    return progress_bar()


def _run_pool(tasks, workers: int, images_dir: Path, out_dir: Path, cfg: AugmentConfig, handle) -> None:
    """Worker processes ('spawn': safe even if the caller has TensorFlow loaded), bounded queue.

    At most 4 tasks per worker are in flight, so Ctrl-C loses little work: the parent stops
    submitting, cancels what has not started, and re-raises.
    """
    import multiprocessing

    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(str(images_dir), str(out_dir), cfg))
    pending: dict = {}
    it = iter(tasks)
    try:
        def submit_more() -> None:
            while len(pending) < 4 * workers:
                t = next(it, None)
                if t is None:
                    return
                pending[ex.submit(_work, *t)] = t

        submit_more()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                sid, path, todo = pending.pop(fut)
                handle(fut.result(), path, len(todo))
            submit_more()
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


# =========================================================================== shard merge
_SHARD_RE = re.compile(rf"^{MANIFEST_NAME}\.shard-(\d+)-of-(\d+)\.csv$")


def merge_manifests(out_dir: str | os.PathLike) -> Path:
    """Combine finished shard manifests into OUT_DIR/manifest.csv, identical to an unsharded run."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: output folder not found")
    found: dict[int, set[int]] = {}
    for p in out_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not found:
        raise UserError(f"{out_dir}: no shard manifests (manifest.shard-I-of-N.csv) to merge")
    if len(found) > 1:
        raise UserError(
            f"{out_dir}: shard manifests of different shard counts ({sorted(found)}); remove the stale ones"
        )
    (n, have), = found.items()
    missing = sorted(set(range(n)) - have)
    if missing:
        raise UserError(f"{out_dir}: missing shard(s) {', '.join(f'{i}/{n}' for i in missing)}; run them first")
    rows: dict[str, tuple[str, str, str]] = {}
    for i in range(n):
        suffix = Shard(i, n).suffix()
        if not (out_dir / f"{REPORT_NAME}{suffix}.json").is_file():
            raise UserError(f"{out_dir}: shard {i}/{n} has not finished; re-run it to complete it")
        for r in read_manifest(out_dir / f"{MANIFEST_NAME}{suffix}.csv"):
            if r["query_id"] in rows:
                raise UserError(f"{out_dir}: query {r['query_id']} appears in two shard manifests")
            rows[r["query_id"]] = (r["query_id"], r["source_id"], r["ops"])
    path = out_dir / f"{MANIFEST_NAME}.csv"
    _rewrite_manifest(path, [rows[q] for q in sorted(rows)])
    return path
