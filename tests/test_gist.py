"""Tests for isc_qk.gist: lear_gist 1.2 colour GIST (4x4 blocks, orientations 8,8,4).

Expected values are derived from how the Gabor bank tiles the Fourier plane (scale centre
radius 32*0.3/1.85^s cycles per image, filter j of a scale with n orientations peaking at
frequency angle -j*pi/n), not from this implementation, plus a few values from a C build
of lear_gist's colour path (see REFERENCE below).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from isc_qk.gist import descriptor as gist
from isc_qk.vectors import l2_normalize

YY, XX = np.mgrid[0:32, 0:32]

# Raw (un-normalised) GIST values at INDICES, computed by lear_gist 1.2's gist.c colour path
# (color_prefilt + color_gist_gabor, gcc -O3, linked with FFTW 3.3 single precision).
INDICES = [0, 1, 15, 16, 17, 100, 159, 160, 200, 300, 319, 320, 321, 500, 639, 640, 700, 800, 900, 959]
REFERENCE = {
    "noise2021": (
        [0.23590504, 0.21186005, 0.12735932, 0.19151111, 0.16888407, 0.14181148, 0.04859323,
         0.06481098, 0.08019803, 0.02902735, 0.05487880, 0.24904434, 0.20484410, 0.08042707,
         0.01338038, 0.21351407, 0.23066232, 0.06692351, 0.05249286, 0.05268568],
        115.71456146,
    ),
    "astronaut16": (
        [0.14989327, 0.05338928, 0.15092862, 0.10938767, 0.08016934, 0.07858399, 0.08526605,
         0.04165732, 0.04776270, 0.02843112, 0.09156920, 0.22464831, 0.18184260, 0.05491490,
         0.10004117, 0.15206753, 0.07833514, 0.04413775, 0.05495868, 0.08923597],
        97.56320190,
    ),
    "coffee12": (
        [0.05919866, 0.03434959, 0.06165545, 0.05229857, 0.03843226, 0.14503126, 0.04531126,
         0.03076533, 0.03832659, 0.04730262, 0.04644600, 0.04396550, 0.07974212, 0.06056841,
         0.06425311, 0.04670911, 0.23517206, 0.05948591, 0.09513967, 0.06646450],
        82.17064667,
    ),
}


def _reference_inputs() -> dict[str, np.ndarray]:
    """The 32x32 inputs of REFERENCE, built without any resampling library."""
    from skimage import data

    return {
        "noise2021": np.random.default_rng(2021).integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "astronaut16": np.ascontiguousarray(data.astronaut()[::16, ::16]),
        "coffee12": np.ascontiguousarray(data.coffee()[::12, ::12][:32, :32]),
    }


def grating(u: int, v: int) -> np.ndarray:
    """Grey sinusoidal grating with u cycles along x and v along y per 32 px."""
    g = 128 + 100 * np.cos(2 * np.pi * (u * XX + v * YY) / 32)
    return np.repeat(np.round(g).astype(np.uint8)[..., None], 3, axis=2)


def filter_energy(img: np.ndarray) -> np.ndarray:
    """(3 channels, 20 filters) energy summed over the 16 blocks."""
    return gist.compute_gist(img).reshape(3, 20, 16).sum(axis=2)


def test_shape_dtype_and_single_image():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    g = gist.compute_gist(imgs)
    assert g.shape == (5, 960) and g.dtype == np.float32
    assert np.all(np.isfinite(g)) and np.all(g >= 0)
    assert gist.compute_gist(imgs[0]).shape == (1, 960)


def test_matches_lear_gist_reference_values():
    for name, img in _reference_inputs().items():
        values, total = REFERENCE[name]
        g = gist.compute_gist(img)[0]
        np.testing.assert_allclose(g[INDICES], values, rtol=0, atol=2e-6, err_msg=name)
        assert abs(float(g.sum()) - total) < 2e-4, name


def test_constant_image_is_zero_after_prefilter():
    for v in (0, 77, 255):
        img = np.full((2, 32, 32, 3), v, np.uint8)
        assert np.abs(gist._prefilter(img)).max() < 1e-5
        assert np.abs(gist.compute_gist(img)).max() < 1e-6


@pytest.mark.parametrize(
    "uv, filt",
    [
        ((10, 0), 0),  # vertical stripes, finest scale (radius 9.6), angle 0
        ((0, 10), 4),  # horizontal stripes: angle pi/2 -> filter 4 of 8
        ((10, 10), 6),  # frequency angle +pi/4 -> filter angle -pi/4 = 3pi/4 -> 6
        ((10, -10), 2),  # frequency angle -pi/4 -> filter angle pi/4 -> 2
        ((5, 0), 8),  # middle scale (radius 5.2): filters 8..15
        ((0, 5), 12),
        ((3, 0), 16),  # coarsest scale (radius 2.8), 4 orientations: filters 16..19
        ((0, 3), 18),
    ],
)
def test_grating_energy_in_expected_scale_and_orientation(uv, filt):
    e = filter_energy(grating(*uv))
    assert list(e.argmax(axis=1)) == [filt] * 3
    others = np.delete(e[0], filt)
    assert e[0, filt] > 1.5 * others.max()


def test_layout_channel_major_then_filter_then_column_major_blocks():
    rng = np.random.default_rng(1)
    img = np.full((32, 32, 3), 120, np.uint8)
    img[:, :16, 0] = rng.integers(0, 256, (32, 16))  # texture: red channel, left half only
    g = gist.compute_gist(img)[0].reshape(3, 20, 4, 4)  # [channel, filter, block_x, block_y]
    assert g[0].sum() > 50 * (g[1].sum() + g[2].sum())  # red first: G and B are flat
    left, right = g[0, :, :2, :], g[0, :, 2:, :]
    # per filter, the textured block columns (block_x 0, 1) hold far more energy than the flat
    # ones; a row-major layout would mix both halves into each pair of 8 dims and fail
    # (coarse filters leak more: the convolution is circular, so column 31 touches column 0)
    assert np.all(left.sum(axis=(1, 2)) > 1.3 * right.sum(axis=(1, 2)))
    flat = g[0].reshape(20, 16)
    assert flat[:8, :8].sum() > 5 * flat[:8, 8:].sum()  # finest scale: sharply localised

    img2 = np.full((32, 32, 3), 120, np.uint8)
    img2[:16, :, :] = rng.integers(0, 256, (16, 32, 3))  # texture in the top half
    g2 = gist.compute_gist(img2)[0].reshape(3, 20, 4, 4)
    assert g2[:, :, :, :2].sum() > 3 * g2[:, :, :, 2:].sum()  # top = small block_y index


def test_horizontal_flip_mirrors_orientations_and_block_columns():
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[::16, ::16])
    a = gist.compute_gist(img).reshape(3, 20, 4, 4)
    b = gist.compute_gist(np.ascontiguousarray(img[:, ::-1])).reshape(3, 20, 4, 4)
    perm, off = [], 0
    for n in gist.ORIENTATIONS:  # angle j*pi/n -> -j*pi/n == (n-j)*pi/n
        perm += [off + (n - j) % n for j in range(n)]
        off += n
    mirrored = b[:, perm][:, :, ::-1, :]
    # not bit-exact: the Nyquist column of the 32x32 DFT has no mirror image
    assert np.abs(a - mirrored).max() < 0.02 * a.max()
    assert np.abs(a - b).max() > 0.1 * a.max()  # and the flip does change the raw vector


def test_batch_equals_single_and_chunking_is_invisible():
    imgs = np.random.default_rng(3).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    full = gist.compute_gist(imgs, chunk=3)
    for i in range(len(imgs)):
        np.testing.assert_allclose(full[i], gist.compute_gist(imgs[i])[0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(full, gist.compute_gist(imgs, chunk=16), rtol=0, atol=1e-7)


def test_block_means_fast_equals_reference_loop():
    e = np.random.default_rng(4).random((2, 3, 20, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(gist._block_means(e), gist._block_means_fast(e))


def test_descriptors_are_unit_norm():
    imgs = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    d = gist.gist_descriptors(imgs)
    assert d.dtype == np.float32 and d.shape == (4, 960)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    assert np.all(l2_normalize(np.zeros((1, 960))) == 0)  # no NaN on zero vectors


def test_rejects_wrong_input():
    with pytest.raises(ValueError):
        gist.compute_gist(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError):
        gist.compute_gist(np.zeros((1, 32, 32), np.uint8))


def _stripe_image(w: int, h: int, horizontal: bool) -> Image.Image:
    """Black image whose middle third (along the long side) is white."""
    a = np.zeros((h, w, 3), np.uint8)
    if horizontal:
        a[:, w // 3 : 2 * w // 3] = 255
    else:
        a[h // 3 : 2 * h // 3, :] = 255
    return Image.fromarray(a)


def test_preprocess_shorter_side_and_centre_crop():
    out = gist.preprocess(_stripe_image(96, 32, horizontal=True))  # landscape: no resize needed
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.min() == 255
    out = gist.preprocess(_stripe_image(32, 96, horizontal=False))  # portrait: centre rows
    assert out.min() == 255
    big = gist.preprocess(_stripe_image(300, 200, horizontal=True))  # 48x32 after resize
    assert big.shape == (32, 32, 3)
    # white columns 100..200 of 300 -> 16..32 of 48 -> 8..24 after the 8 px centre crop
    assert big[:, 9:23].min() > 250 and big[:, :7].max() < 5 and big[:, 25:].max() < 5
    gray = gist.preprocess(Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64), "L"))
    assert gray.shape == (32, 32, 3) and np.array_equal(gray[..., 0], gray[..., 2])


def test_preprocess_official_portrait_quirk():
    img = _stripe_image(32, 96, horizontal=False)
    quirk = gist.preprocess(img, official_portrait_quirk=True)
    expected = np.asarray(img.resize((96, 32), Image.BILINEAR).crop((0, 0, 32, 32)))
    np.testing.assert_array_equal(quirk, expected)
    sq = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8))
    np.testing.assert_array_equal(gist.preprocess(sq), gist.preprocess(sq, official_portrait_quirk=True))
