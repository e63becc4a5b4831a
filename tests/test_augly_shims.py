"""The AugLy compatibility shims: they restore exactly what AugLy needs, and the ops run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from isc_qk.augment import shims as augly_shims

augly_shims.apply()

import augly.image as imaugs  # noqa: E402
import augly.utils as augly_utils  # noqa: E402


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((160, 128))


def _font(size: int = 24) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(augly_utils.MEME_DEFAULT_FONT, size)


def test_getsize_multiline_is_the_text_box_at_origin():
    font = _font()
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    for text in ("LOL", "WAIT\nFOR IT"):
        box = draw.multiline_textbbox((0, 0), text, font=font)
        assert font.getsize_multiline(text) == (box[2], box[3])
    one, two = font.getsize_multiline("AB"), font.getsize_multiline("AB\nAB")
    assert two[0] == one[0] and two[1] > 1.5 * one[1]
    assert font.getsize("AB") == font.getsize_multiline("AB")


def test_meme_format_adds_a_caption_above_the_image(photo):
    caption = 50
    out = imaugs.meme_format(photo, text="LOL", caption_height=caption, meme_bg_color=(0, 0, 255),
                             text_color=(255, 255, 0))
    assert out.size == (photo.width, photo.height + caption)
    a = np.asarray(out.convert("RGB"))
    # the image sits unchanged below the caption; the caption is mostly background with text in it
    assert np.array_equal(a[caption:], np.asarray(photo))
    cap = a[:caption].reshape(-1, 3)
    is_bg = (cap == [0, 0, 255]).all(axis=1)
    assert 0.4 < is_bg.mean() < 1.0
    assert ((cap[:, 0] > 200) & (cap[:, 1] > 200) & (cap[:, 2] < 60)).any()  # yellow text drawn


def _homography_apply(coeffs: np.ndarray, x: float, y: float) -> tuple[float, float]:
    a, b, c, d, e, f, g, h = coeffs
    w = g * x + h * y + 1.0
    return (a * x + b * y + c) / w, (d * x + e * y + f) / w


def test_transform_coeffs_map_destination_corners_back_to_source():
    square = [(0, 0), (200, 0), (200, 100), (0, 100)]
    assert np.allclose(augly_shims.compute_transform_coeffs(square, square), [1, 0, 0, 0, 1, 0, 0, 0], atol=1e-9)
    rng = np.random.default_rng(5)
    dst = [(x + rng.normal(0, 15), y + rng.normal(0, 15)) for x, y in square]
    coeffs = augly_shims.compute_transform_coeffs(square, dst)
    for (sx, sy), (dx, dy) in zip(square, dst):
        assert np.allclose(_homography_apply(coeffs, dx, dy), (sx, sy), atol=1e-6)


def test_perspective_transform_runs_and_is_seeded(photo):
    a = imaugs.perspective_transform(photo, sigma=12.0, seed=7)
    b = imaugs.perspective_transform(photo, sigma=12.0, seed=7)
    c = imaugs.perspective_transform(photo, sigma=12.0, seed=8)
    assert a.size == photo.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(photo, dtype=int)).mean() > 5


def test_apply_is_idempotent_and_routes_augly_to_the_shim():
    import augly.image.utils as imutils
    from augly.image.utils import utils as imutils_impl

    augly_shims.apply()
    augly_shims.apply()
    assert imutils.compute_transform_coeffs is augly_shims.compute_transform_coeffs
    assert imutils_impl.compute_transform_coeffs is augly_shims.compute_transform_coeffs
    assert not hasattr(np, "float")  # NumPy itself is left alone
    assert hasattr(ImageFont.FreeTypeFont, "getsize_multiline")
