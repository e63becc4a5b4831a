"""THE augmentation recipe: every edit, its family, sampling weight and parameter ranges.

Everything about the edits lives in one table, `RECIPE`: each `Op` names its family, the AugLy
function, a sampling weight and the range of every parameter. `render_recipe_markdown` prints
that table for the README, so the docs cannot drift from the code.

Determinism: the edits of copy `c` of image `i` are drawn from
`np.random.default_rng([seed, crc32(i), c])` (`sample_edits`), so they do not depend on the
number of worker processes, on the order of completion, or on the shard. Sampled parameters
are rounded before they are applied, so the manifest replays exactly.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import augly.image as imaugs
import numpy as np
from PIL import Image

from .ops import (
    MEME_TEXTS,
    SCREENSHOT_TEMPLATES,
    Context,
    emoji_names,
    op_emoji,
    op_meme,
    op_onto_background,
    op_overlay_other,
    op_perspective,
    op_screenshot,
    op_text,
    rgb,
    text_fonts,
)

from ..configs import MIN_SIDE  # noqa: E402,F401  (edits never leave an image smaller than this)


# =========================================================================== parameter specs
@dataclass(frozen=True)
class Uniform:
    lo: float
    hi: float

    def sample(self, rng: np.random.Generator, ctx: Context) -> float:
        return round(float(rng.uniform(self.lo, self.hi)), 3)

    def explain(self) -> str:
        return f"uniform {self.lo:g} .. {self.hi:g}"


@dataclass(frozen=True)
class LogUniform:
    lo: float
    hi: float

    def sample(self, rng: np.random.Generator, ctx: Context) -> float:
        return round(float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))), 3)

    def explain(self) -> str:
        return f"log-uniform {self.lo:g} .. {self.hi:g}"


@dataclass(frozen=True)
class IntRange:
    lo: int
    hi: int  # inclusive

    def sample(self, rng: np.random.Generator, ctx: Context) -> int:
        return int(rng.integers(self.lo, self.hi + 1))

    def explain(self) -> str:
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

    def explain(self) -> str:
        if self.label:
            return self.label.format(n=len(self.values()))
        return "one of " + ", ".join(str(o) for o in self.values())


@dataclass(frozen=True)
class Colour:
    def sample(self, rng: np.random.Generator, ctx: Context) -> list[int]:
        return [int(c) for c in rng.integers(0, 256, size=3)]

    def explain(self) -> str:
        return "random RGB"


@dataclass(frozen=True)
class Seed:
    """A seed for AugLy ops that draw their own random numbers (noise, shuffle, perspective)."""

    def sample(self, rng: np.random.Generator, ctx: Context) -> int:
        return int(rng.integers(0, 2**31 - 1))

    def explain(self) -> str:
        return "random seed"


@dataclass(frozen=True)
class TextIndices:
    """Random characters: indices into the chosen font's own character list."""

    min_len: int
    max_len: int

    def sample(self, rng: np.random.Generator, ctx: Context) -> list[int]:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        return [int(c) for c in rng.integers(0, 10_000, size=n)]

    def explain(self) -> str:
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

    def explain(self) -> str:
        return "another image of the input folder"


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
       op_emoji),
    Op("overlay", "overlay_text", 1.5,
       {"text": TextIndices(3, 14),
        "font": C(text_fonts, "one of the {n} fonts bundled with AugLy (with a .pkl character list)"),
        "font_size": U(0.08, 0.25), "opacity": U(0.5, 1.0), "color": Colour(), "x_pos": U(0.0, 0.6),
        "y_pos": U(0.0, 0.85)},
       op_text),
    Op("overlay", "overlay_image", 1.0,
       {"other": OtherImage(), "overlay_size": U(0.2, 0.6), "opacity": U(0.4, 1.0), **XY},
       op_overlay_other),
    Op("overlay", "overlay_stripes", 1.0,
       {"line_width": U(0.05, 0.6), "line_color": Colour(), "line_angle": U(-90.0, 90.0),
        "line_density": U(0.1, 0.8), "line_type": C(("solid", "dotted", "dashed")), "line_opacity": U(0.3, 1.0)},
       lambda im, p, c: imaugs.overlay_stripes(im, line_width=p["line_width"], line_color=rgb(p["line_color"]),
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
       op_perspective),
    Op("spatial", "pad", 1.0, {"w_factor": U(0.05, 0.4), "h_factor": U(0.05, 0.4), "color": Colour()},
       lambda im, p, c: imaugs.pad(im, w_factor=p["w_factor"], h_factor=p["h_factor"], color=rgb(p["color"]))),
    Op("spatial", "change_aspect_ratio", 1.0, {"ratio": LogUniform(0.5, 2.0)},
       lambda im, p, c: imaugs.change_aspect_ratio(im, ratio=p["ratio"])),
    Op("spatial", "scale", 1.0, {"factor": U(0.3, 1.0)},
       lambda im, p, c: imaugs.scale(im, factor=p["factor"])),
    # composition
    Op("composition", "overlay_onto_screenshot", 0.75,
       {"template": C(SCREENSHOT_TEMPLATES), "crop_src_to_fit": C((False, True))},
       op_screenshot),
    Op("composition", "meme_format", 0.75,
       {"text": C(MEME_TEXTS), "caption_frac": U(0.12, 0.3), "text_color": Colour(), "bg_color": Colour()},
       op_meme),
    Op("composition", "overlay_onto_background_image", 1.0,
       {"background": OtherImage(), "overlay_size": U(0.35, 0.85), **XY, "scale_bg": C((False, True))},
       op_onto_background),
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
        params = "; ".join(f"`{k}`: {spec.explain()}" for k, spec in op.params.items()) or "-"
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
    ctx = ctx.at(source_id)
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
