"""Colour GIST exactly as lear_gist 1.2 computes it, vectorised over a batch of images.

This is a clean re-implementation (not a port of the code) of
``color_gist_scaletab(img, nblocks=4, n_scale=3, orientations_per_scale={8, 8, 4})`` from
``lear_gist-1.2/gist.c`` (INRIA, 2009), the library the official ISC2021 GIST baseline
(facebookresearch/isc2021, ``baselines/gist_baseline.py`` driving ``compute_gist_stream``)
calls on 32x32 RGB images. Line references below are to the functions of that ``gist.c``:

* ``color_image_add_padding(src, 5)``: symmetric (edge-repeating) 5 px padding -> 42x42.
* ``create_gabor(n_scale, or, w, h)``: transfer functions of the 20 Gabor filters, built on
  the *unpadded* image size (32x32); see `_gabor_bank`.
* ``color_prefilt(img, 4)``: log(1 + v), pad 5, whiten with a Gaussian of
  ``s1 = fc / sqrt(log 2)``, then divide by 0.2 + local contrast computed on the mean of the
  three channels, crop back to 32x32; see `_prefilter`.
* ``color_gist_gabor(img, 4, G)``: FFT of each (unpadded, uncropped) prefiltered channel,
  multiply by each filter, inverse FFT, modulus / (w*h), then ``color_down_N`` 4x4 block
  means; see `_gabor_energy` and `_block_means`.

Output layout (``color_gist_gabor``: ``res + c*G->size*w*w + k*w*w`` and ``color_down_N``:
``res[k*N + l]`` with k the x block and l the y block)::

    index = channel*320 + filter*16 + block_x*4 + block_y

channel in R, G, B order; filter k = 0..19 from the finest scale (8 orientations at
0.3 cycles/pixel, angle k*pi/8), then 8 at 0.3/1.85, then 4 at 0.3/1.85^2; blocks are
COLUMN-major (block_x outer), i.e. the transpose of a row-major 4x4 grid.

Precision: every elementwise step reproduces C's float/double promotions (float32 storage,
``exp``/``log``/``sqrt``/``atan2`` evaluated in double then rounded to float, block sums
accumulated sequentially in float32). FFTs are pocketfft (``scipy.fft``), unnormalised like
FFTW; FFTW's own rounding cannot be reproduced, so results differ from the C library by FFT
rounding only. Measured against a build of gist.c's colour path linked with fftwf: the
Gabor stage in single precision (complex64) is closest to C, while the prefilter's two
low-pass filters are closest when computed in double (`PREFILT_FFT_DTYPE`) and stored as
float -- the subtraction ``x - lowpass(x)`` cancels most digits of log(v+1) ~ 5, so C's and
ours rounding noise both get amplified on low-contrast images. Max difference on 400 photo
crops: 9e-7 per raw value (values up to ~0.5); after L2 normalisation up to ~5e-6 on
low-contrast images whose raw norm is ~0.15 (typical images: < 1e-6).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from ..vectors import l2_normalize

IMAGE_SIZE = 32
N_BLOCKS = 4
ORIENTATIONS: tuple[int, ...] = (8, 8, 4)
PREFILT_FC = 4
PAD = 5  # color_prefilt: color_image_add_padding(src, 5)
N_FILTERS = sum(ORIENTATIONS)
GIST_DIM = 3 * N_FILTERS * N_BLOCKS * N_BLOCKS  # 960

_F32 = np.float32
_F64 = np.float64


# --------------------------------------------------------------------------- filters


def _centred_freqs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """fx, fy grids as gist.c builds them: ``(float) i - width/2.0f`` (exact small integers)."""
    ramp = np.arange(size, dtype=_F32) - _F32(size / 2.0)
    fx, fy = np.meshgrid(ramp, ramp)  # fx varies along columns (x), fy along rows (y)
    return fx, fy


@lru_cache(maxsize=8)
def _prefilter_gaussian(size: int, fc: int = PREFILT_FC) -> np.ndarray:
    """``gfc`` of color_prefilt: exp(-(fx^2+fy^2)/s1^2), fftshifted, as float32 (size x size).

    C: ``float s1 = fc/sqrt(log(2))`` (double maths, stored as float); the exponent is a
    float expression (``-(fx*fx+fy*fy) / (s1*s1)``), ``exp`` runs in double, result float.
    """
    s1 = _F32(fc / math.sqrt(math.log(2)))
    fx, fy = _centred_freqs(size)
    r2 = fx * fx + fy * fy  # float32, exact
    arg = (-r2) / (s1 * s1)  # float32 division, as in C
    gfc = np.exp(arg.astype(_F64)).astype(_F32)
    gfc = np.fft.fftshift(gfc)  # gist.c fftshift() == numpy's for any size
    gfc.setflags(write=False)
    return gfc


@lru_cache(maxsize=8)
def _gabor_bank(size: int = IMAGE_SIZE, orientations: tuple[int, ...] = ORIENTATIONS) -> np.ndarray:
    """Transfer functions of create_gabor(): float32 (n_filters, size, size), fftshifted.

    Parameters per filter (scale i = 1.., orientation j = 1..), computed in double and
    stored as float as in C: p0 = 0.35f, p1 = 0.3/pow(1.85f, i-1), p2 = 16*or^2/32^2,
    p3 = M_PI/or*(j-1). Then, per frequency (fr = radius, f = atan2(fy, fx), fftshifted):
    tmp = f + p3 wrapped into [-pi, pi]; G = exp(-10 p0 (fr/h/p1 - 1)(fr/w/p1 - 1)
    - 2 p2 pi tmp^2), where the first product is float arithmetic and the second double.
    """
    fx, fy = _centred_freqs(size)
    fr = np.sqrt((fx * fx + fy * fy).astype(_F64)).astype(_F32)
    f = np.arctan2(fy.astype(_F64), fx.astype(_F64)).astype(_F32)
    fr = np.fft.fftshift(fr)
    f = np.fft.fftshift(f)
    width = height = _F32(size)
    bank = []
    for i, n_or in enumerate(orientations):  # i = scale - 1
        p0 = _F32(0.35)
        p1 = _F32(0.3 / math.pow(float(_F32(1.85)), i))
        p2 = _F32(16 * math.pow(n_or, 2) / math.pow(32, 2))
        for j in range(n_or):
            p3 = _F32(math.pi / n_or * j)
            tmp = f + p3  # float + float
            tmp64 = tmp.astype(_F64)
            tmp = np.where(tmp64 < -math.pi, (tmp64 + 2.0 * math.pi).astype(_F32), tmp)
            tmp = np.where(tmp64 > math.pi, (tmp64 - 2.0 * math.pi).astype(_F32), tmp)
            radial = (_F32(-10.0) * p0) * (fr / height / p1 - _F32(1)) * (fr / width / p1 - _F32(1))
            angular = _F64(_F32(2.0) * p2) * math.pi * tmp.astype(_F64) * tmp.astype(_F64)
            bank.append(np.exp(radial.astype(_F64) - angular).astype(_F32))
    out = np.stack(bank)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=4)
def _log1p_table() -> np.ndarray:
    """``log(v + 1.0f)`` for v = 0..255: C evaluates it in double and stores a float."""
    table = np.log(np.arange(1, 257, dtype=_F64)).astype(_F32)
    table.setflags(write=False)
    return table


# --------------------------------------------------------------------------- pipeline


PREFILT_FFT_DTYPE = np.float64


def _lowpass(x: np.ndarray, gfc_half: np.ndarray) -> np.ndarray:
    """Unnormalised IFFT(FFT(x) * gfc) over the last two axes (real, even filter -> real result)."""
    height, width = x.shape[-2:]
    spec = sfft.rfft2(x.astype(PREFILT_FFT_DTYPE, copy=False), workers=1)
    spec *= gfc_half.astype(PREFILT_FFT_DTYPE, copy=False)
    return sfft.irfft2(spec, s=(height, width), norm="forward", workers=1)


def _prefilter(images: np.ndarray) -> np.ndarray:
    """color_prefilt(img, 4) for a batch: uint8 (N, H, W, 3) -> float32 (N, 3, H, W).

    Steps (C order): log(v+1); symmetric 5 px padding; x -= IFFT(FFT(x)*gfc)/(w*h) per
    channel; m = (c1+c2+c3)/3; c /= 0.2 + sqrt(|IFFT(FFT(m^2)*gfc)|/(w*h)); crop the pad.
    Both Gaussian filters are real and even, so the real-input FFTs (rfft2/irfft2) give the
    same values as C's complex transforms (C keeps only the real part of the first result;
    the imaginary part of the second is rounding noise far below float resolution). Every
    value C stores as float is rounded to float32 here at the same point.
    """
    x = _log1p_table()[images]  # (N, H, W, 3) float32
    x = np.ascontiguousarray(np.moveaxis(x, -1, 1))  # (N, 3, H, W)
    x = np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)), mode="symmetric")
    height, width = x.shape[-2:]
    if height != width:
        raise ValueError("lear_gist's filters assume square images here; got %dx%d" % (width, height))
    gfc_half = _prefilter_gaussian(width)[:, : width // 2 + 1]
    area = _F32(width * height)

    low = _lowpass(x, gfc_half)
    x = x - low.astype(_F32, copy=False) / area
    mean = (x[:, 0] + x[:, 1] + x[:, 2]) / _F32(3.0)
    energy = _lowpass(mean * mean, gfc_half).astype(_F32, copy=False)
    val = np.sqrt(np.sqrt((energy * energy).astype(_F64)) / (width * height)).astype(_F32)
    x = x / (_F32(0.2) + val)[:, None]
    return x[:, :, PAD:-PAD, PAD:-PAD]


def _gabor_energy(pre: np.ndarray) -> np.ndarray:
    """The filtering half of color_gist_gabor: float32 (N, 3, H, W) -> (N, 3, F, H, W).

    C: out = FFT(channel); for each filter k: IFFT(out * G_k) (unnormalised FFTW backward
    transform); value = sqrt(re*re + im*im) / (w*h) with the sum in float and sqrt in double.
    """
    height, width = pre.shape[-2:]
    bank = _gabor_bank(width)
    spectrum = sfft.fft2(pre.astype(np.complex64), workers=1)  # (N, 3, H, W)
    filtered = spectrum[:, :, None] * bank  # complex64 * float32 -> complex64
    resp = sfft.ifft2(filtered, norm="forward", overwrite_x=True, workers=1)
    re, im = resp.real, resp.imag
    power = re * re + im * im  # float32, no FMA, as gcc -O3 without -march builds it
    # float(sqrt(double(p)) / (w*h)): sqrt of a float is correctly rounded either way, and the
    # division by a power of two is exact.
    return np.sqrt(power) / _F32(width * height)


def _block_means(energy: np.ndarray, n_blocks: int = N_BLOCKS) -> np.ndarray:
    """color_down_N for a batch: (N, C, F, H, W) -> (N, C, F, n_blocks*n_blocks).

    Block edges are ``i*size/N`` (integer division); each block sum is a float accumulated
    row by row, left to right, then divided by the float pixel count; the block index is
    ``k*N + l`` with k the x (column) block and l the y (row) block.
    """
    height, width = energy.shape[-2:]
    ys = [i * height // n_blocks for i in range(n_blocks + 1)]
    xs = [i * width // n_blocks for i in range(n_blocks + 1)]
    out = np.empty(energy.shape[:-2] + (n_blocks, n_blocks), dtype=_F32)  # [..., k(x), l(y)]
    for k in range(n_blocks):
        for l in range(n_blocks):
            block = energy[..., ys[l] : ys[l + 1], xs[k] : xs[k + 1]]
            acc = np.zeros(energy.shape[:-2], dtype=_F32)
            for j in range(block.shape[-2]):
                for i in range(block.shape[-1]):
                    acc += block[..., j, i]
            out[..., k, l] = acc / _F32((ys[l + 1] - ys[l]) * (xs[k + 1] - xs[k]))
    return out.reshape(energy.shape[:-2] + (n_blocks * n_blocks,))


def _block_means_fast(energy: np.ndarray, n_blocks: int = N_BLOCKS) -> np.ndarray:
    """Same result as `_block_means` (identical float32 summation order) with fewer Python ops.

    Valid when the size is divisible by n_blocks: the pixels of every block are moved to a
    leading axis in C's order (row, then column) and summed one slice at a time, which is
    the same sequential float accumulation as the C loop for all blocks at once.
    """
    height, width = energy.shape[-2:]
    if height % n_blocks or width % n_blocks:
        return _block_means(energy, n_blocks)
    bh, bw = height // n_blocks, width // n_blocks
    lead = energy.shape[:-2]
    # (..., l, j, k, i) -> (j, i, ..., k, l)
    e = energy.reshape(lead + (n_blocks, bh, n_blocks, bw))
    nd = len(lead)
    order = (nd + 1, nd + 3) + tuple(range(nd)) + (nd + 2, nd)
    e = np.ascontiguousarray(e.transpose(order)).reshape((bh * bw,) + lead + (n_blocks, n_blocks))
    acc = e[0].copy()
    for t in range(1, bh * bw):
        acc += e[t]
    acc /= _F32(bh * bw)
    return acc.reshape(lead + (n_blocks * n_blocks,))


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images N x H x W x 3, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.shape[1] < 8 or images.shape[2] < 8:  # color_gist_scaletab refuses these too
        raise ValueError("images must be at least 8x8 pixels")
    return images


def compute_gist(images: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Raw lear_gist colour GIST (before L2 normalisation): uint8 (N,32,32,3) RGB -> float32 (N,960).

    Equivalent to ``color_gist_scaletab(img, 4, 3, {8,8,4})`` on each image, with pixel
    values 0..255 in c1=R, c2=G, c3=B (what compute_gist_stream reads from a PPM). Works in
    chunks of `chunk` images so the (chunk, 3, 20, 32, 32) complex buffer stays in cache.
    A single H x W x 3 image is accepted and returns shape (1, 960).
    """
    images = _check_images(images)
    n = images.shape[0]
    out = np.empty((n, 3 * N_FILTERS * N_BLOCKS * N_BLOCKS), dtype=_F32)
    for start in range(0, n, chunk):
        batch = images[start : start + chunk]
        energy = _gabor_energy(_prefilter(batch))
        out[start : start + len(batch)] = _block_means_fast(energy).reshape(len(batch), -1)
    return out


def gist_descriptors(images_uint8: np.ndarray) -> np.ndarray:
    """L2-normalised 960-d GIST, the descriptor the ISC2021 baseline matches and feeds to PCA."""
    return l2_normalize(compute_gist(images_uint8))


# --------------------------------------------------------------------------- preprocessing


def preprocess(img, size: int = IMAGE_SIZE, *, official_portrait_quirk: bool = False) -> np.ndarray:
    """PIL image -> uint8 (size, size, 3): RGB, shorter side resized to `size` (bilinear), centre crop.

    Mirrors ``GISTFeatures.preproc_image`` of facebookresearch/isc2021
    ``baselines/gist_baseline.py``: convert to RGB only when the mode is not RGB; the long
    side becomes ``size * long // short`` (integer floor); Pillow's BILINEAR resize (which
    antialiases when shrinking); crop offset ``(long2 - size) / 2`` passed as a float, which
    Pillow rounds half to even. No EXIF rotation, no JPEG draft mode (both would change pixels).

    The official code is only right for landscape and square images: for portrait images it
    resizes to (size*h//w, size) -- width and height swapped, so the picture is squashed --
    and then keeps the LEFT-most `size` columns. By default this function does what its
    comment and the ISC reference intend (shorter side to `size`, centre crop);
    ``official_portrait_quirk=True`` reproduces the official behaviour bit for bit.
    """
    from PIL import Image

    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w > h:
        img = img.resize((size * w // h, size), Image.BILINEAR)
        pad = (img.size[0] - size) / 2
        img = img.crop((pad, 0, pad + size, size))
    elif official_portrait_quirk:
        img = img.resize((size * h // w, size), Image.BILINEAR)
        pad = (img.size[1] - size) / 2  # always 0: the quirk crops the left-most columns
        img = img.crop((0, pad, size, pad + size))
    else:
        img = img.resize((size, size * h // w), Image.BILINEAR)
        pad = (img.size[1] - size) / 2
        img = img.crop((0, pad, size, pad + size))
    arr = np.asarray(img, dtype=np.uint8)
    assert arr.shape == (size, size, 3), arr.shape
    return arr
