"""THE encoder name grammar, parsed in one place.

    NAME   := BASE [ "@" RESIZE ]
    BASE   := a registered name (``gist``, ``sscd``, ``efficientnet-lite0``, ``tiny`` ...)
            | PREFIX ":" ARGUMENT     (``onnx:PATH``, ``keras:PATH``)
    RESIZE := ( "sq" | "short" ) SIZE  (``sq288``: every image to 288 x 288, aspect not kept;
                                        ``short288``: the shorter side to 288 px, aspect kept)

A trailing ``@...`` that is not a resize belongs to the base (a path may contain ``@``).
Names are plain strings in configs and records; `Name` is what the code reads them as, so no
other module slices them. File-name parts (`slug`) and results-table labels (`label`) are
derived here too, so a new encoder gets them for free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_RESIZE = re.compile(r"^(sq|short)([0-9]+)$")


@dataclass(frozen=True)
class Resize:
    """How an image is resized for an encoder that takes any size."""

    mode: str  # "sq" (square, aspect not kept) or "short" (shorter side, aspect kept)
    size: int

    def __str__(self) -> str:
        return f"{self.mode}{self.size}"

    def size_of(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of this size is resized to."""
        if self.mode == "sq":
            return self.size, self.size
        s = self.size / min(width, height)
        return max(1, round(width * s)), max(1, round(height * s))


@dataclass(frozen=True)
class Name:
    """A parsed encoder name: base (``sscd``, ``onnx``...), its argument (a path) and resize."""

    base: str
    argument: str | None = None
    resize: Resize | None = None

    @classmethod
    def parse(cls, text: str) -> "Name":
        text = str(text)
        head, sep, tail = text.rpartition("@")
        resize = None
        m = _RESIZE.match(tail) if sep else None
        if m and head:
            text, resize = head, Resize(m.group(1), int(m.group(2)))
            if resize.size < 1:
                resize = None
        base, sep, arg = text.partition(":")
        if sep and base.isidentifier():
            return cls(base, arg, resize)
        return cls(text, None, resize)

    def __str__(self) -> str:
        s = f"{self.base}:{self.argument}" if self.argument is not None else self.base
        return f"{s}@{self.resize}" if self.resize else s

    @property
    def path(self) -> Path | None:
        """The file of a ``prefix:PATH`` name (as given, ~ expanded)."""
        return Path(self.argument).expanduser() if self.argument is not None else None

    @property
    def slug(self) -> str:
        """File-name part: ``gist``, ``sscd``, ``sscd_distilled``, ``onnx``, ``sscd_sq288``..."""
        stem = self.base.replace("-", "_")
        return stem + (f"_{self.resize}" if self.resize else "")

    @property
    def label(self) -> str:
        """Results-table name of its PCA-256 baseline: ``GIST-PCA256``, ``SSCD-PCA256 (288x288)``..."""
        stem = Path(self.argument).stem if self.argument is not None else self.base.upper()
        r = self.resize
        size = "" if r is None else (f" ({r.size}x{r.size})" if r.mode == "sq" else f" (short side {r.size})")
        return f"{stem}-PCA256{size}"

    @property
    def short_label(self) -> str:
        """``GIST``, ``SSCD (288x288)``...: how a results row says what a model starts from."""
        return self.label.replace("-PCA256", "")
