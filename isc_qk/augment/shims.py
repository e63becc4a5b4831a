"""Keep AugLy 1.0's image ops working on current Pillow (>= 10) and NumPy (>= 2).

AugLy 1.0 was written against Pillow 9 and NumPy 1.x, and two of the ops we need for
ISC-style queries break on the versions installed here:

* `meme_format` measures its caption with `FreeTypeFont.getsize_multiline`, which Pillow 10
  removed. We add `getsize` / `getsize_multiline` back to `FreeTypeFont` (only when absent),
  computed from `ImageDraw.multiline_textbbox` exactly as Pillow's migration notes describe:
  the old functions returned the right/bottom edge of the text box drawn at (0, 0).
* `perspective_transform` solves for its homography with `np.matrix(..., dtype=np.float)`;
  `np.float` is gone in NumPy 2. We replace AugLy's `compute_transform_coeffs` with the same
  least-squares solution written with plain arrays (no `np.matrix`, no `np.float`). We do
  NOT add `np.float` back to NumPy: that would change NumPy for every other library too.

`apply()` is idempotent and cheap; the augment runner calls it where each worker process
starts (`augment.runner._init_worker`), so nothing is patched merely by importing isc-qk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_applied = False


# --------------------------------------------------------------------------- Pillow: text size
def _getsize_multiline(self, text: str, direction=None, spacing: int = 4, features=None, language=None,
                       stroke_width: int = 0) -> tuple[int, int]:
    """Pillow < 10 `FreeTypeFont.getsize_multiline`: (width, height) of the text drawn at (0, 0)."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = draw.multiline_textbbox(
        (0, 0), text, font=self, spacing=spacing, direction=direction, features=features,
        language=language, stroke_width=stroke_width,
    )
    return int(right), int(bottom)


def _getsize(self, text: str, direction=None, features=None, language=None, stroke_width: int = 0,
             ) -> tuple[int, int]:
    """Pillow < 10 `FreeTypeFont.getsize`: (width, height) of one line drawn at (0, 0)."""
    left, top, right, bottom = self.getbbox(
        text, direction=direction, features=features, language=language, stroke_width=stroke_width
    )
    return int(right), int(bottom)


def patch_pillow_text_size() -> bool:
    """Give `FreeTypeFont` back the size methods AugLy calls; True if a patch was needed."""
    from PIL import ImageFont

    patched = False
    if not hasattr(ImageFont.FreeTypeFont, "getsize_multiline"):
        ImageFont.FreeTypeFont.getsize_multiline = _getsize_multiline  # type: ignore[attr-defined]
        patched = True
    if not hasattr(ImageFont.FreeTypeFont, "getsize"):
        ImageFont.FreeTypeFont.getsize = _getsize  # type: ignore[attr-defined]
        patched = True
    return patched


# --------------------------------------------------------------------------- NumPy: homography
def compute_transform_coeffs(
    src_coords: Sequence[tuple[float, float]], dst_coords: Sequence[tuple[float, float]]
) -> np.ndarray:
    """The 8 coefficients of Pillow's PERSPECTIVE transform mapping dst corners to src corners.

    Same maths as AugLy's original (normal equations of the 8x8 system, (A^T A)^-1 A^T B),
    written with float64 arrays so it runs on NumPy 2.
    """
    rows = []
    for (sx, sy), (dx, dy) in zip(src_coords, dst_coords):
        rows.append([dx, dy, 1.0, 0.0, 0.0, 0.0, -sx * dx, -sx * dy])
        rows.append([0.0, 0.0, 0.0, dx, dy, 1.0, -sy * dx, -sy * dy])
    a = np.asarray(rows, dtype=np.float64)
    b = np.asarray(src_coords, dtype=np.float64).reshape(8)
    return np.linalg.inv(a.T @ a) @ a.T @ b


def _original_coeffs_broken() -> bool:
    """True if AugLy's own `compute_transform_coeffs` fails on this NumPy (np.float gone)."""
    from augly.image.utils import utils as imutils_impl

    square = [(0, 0), (1, 0), (1, 1), (0, 1)]
    try:
        imutils_impl.compute_transform_coeffs(square, square)
    except AttributeError:
        return True
    return False


def patch_perspective_transform() -> bool:
    """Route AugLy's perspective_transform through our NumPy-2-safe coefficient solver."""
    import augly.image.utils as imutils
    from augly.image.utils import utils as imutils_impl

    if imutils.compute_transform_coeffs is compute_transform_coeffs:
        return False
    if not _original_coeffs_broken():
        return False
    # functional.py looks the function up as `imutils.compute_transform_coeffs` at call time,
    # so replacing it in both the package and its implementation module covers every caller.
    imutils.compute_transform_coeffs = compute_transform_coeffs
    imutils_impl.compute_transform_coeffs = compute_transform_coeffs
    return True


def apply() -> None:
    """Install every shim that this Pillow/NumPy needs (idempotent)."""
    global _applied
    if _applied:
        return
    patch_pillow_text_size()
    patch_perspective_transform()
    _applied = True
