"""What every encoder is: an image -> vector producer with a name, a spec and a fingerprint.

An encoder is used in two steps, so that the per-image stages can decode files in parallel
threads and run the model on whole chunks:

* ``decode(image)``: the per-image work on a decoded RGB PIL image (resizing, GIST's 32x32
  preprocessing...), run in the decode threads; returns a uint8 array;
* ``encode(decoded)``: a chunk of those arrays -> (n, spec.dim) float32 vectors.

`EncoderSpec.trainable` is THE meaning of "frozen" everywhere: a frozen encoder (GIST, an ONNX
model, a Keras backbone created with ``trainable=False``) is never trained, so its vectors are
computed once per image and read from a table afterwards; a trainable one is a Keras model
whose weights belong to one QK side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .names import Name

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class EncoderSpec:
    """What callers must know about an encoder before running it."""

    dim: int  # output width
    trainable: bool  # False: frozen (never trained; its vectors are precomputed)
    input_size: int | None = None  # the square pixel side of a Keras backbone (None: sizes its own input)
    # as a residual start: L2 after its PCA (embeddings, as SSCD is evaluated) or not (GIST, as
    # the official GIST-PCA256 baseline)
    l2_after_pca: bool = True


class Encoder(ABC):
    """One image -> vector producer (see the module docstring)."""

    #: A short phrase for messages ("frozen ONNX embedder", ...).
    kind: ClassVar[str] = "encoder"
    #: The name grammar this class accepts (`names`): ``BASE:PATH`` names, ``@RESIZE`` suffixes.
    takes_path: ClassVar[bool] = False
    takes_resize: ClassVar[bool] = False
    #: A Keras backbone whose weights can train (`registry.is_trainable`).
    can_train: ClassVar[bool] = False
    #: `decode` computes in Python/NumPy holding the GIL (GIST) and the encoder pickles: the
    #: per-image runner then decodes in worker processes instead of threads.
    decode_in_processes: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def create(cls, name: Name, *, trainable: bool, weights: str | None, folder: Path | None) -> "Encoder":
        """An instance for a parsed name (see `registry.create`)."""

    @classmethod
    def available(cls, name: Name) -> bool:
        """Whether it can be created here (optional wheels, runtimes); cheap, loads nothing big."""
        return True

    def __init__(self, name: Name) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.name)!r})"

    @property
    def id(self) -> str:
        """The canonical name string (what configs and records hold)."""
        return str(self.name)

    @property
    @abstractmethod
    def spec(self) -> EncoderSpec: ...

    @abstractmethod
    def decode(self, image) -> np.ndarray:
        """Per-image preparation of a decoded RGB PIL image (runs in the decode threads)."""

    @abstractmethod
    def encode(self, decoded: Sequence[np.ndarray], pad_to: int | None = None) -> np.ndarray:
        """(n, dim) float32 vectors of decoded images. `pad_to`: run at this batch size (the
        short last chunk padded), so a row does not depend on the chunking."""

    @abstractmethod
    def fingerprint(self) -> str:
        """What its vectors depend on (a file's bytes, weights' values, a version)."""

    # ------------------------------------------------------------------ Keras-backed encoders
    @property
    def model(self) -> "keras.Model | None":
        """The Keras model behind a Keras backbone (its weights are a QK side's); None otherwise."""
        return None

    @classmethod
    def folder_files(cls, folder: Path) -> list[Path]:
        """Files an encoder of this class keeps inside a model folder besides weights
        (``backbone.keras``); known from the class alone, so a folder is checked without loading."""
        return []

    def install(self, folder: Path) -> None:
        """Copy what `files_in` names into a model folder (atomically)."""

    def options(self) -> dict[str, Any]:
        """Construction options to record (weights source...), for messages and records."""
        return {}
