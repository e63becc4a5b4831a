"""Every encoder, registered in one place: the name -> class table, filled by discovery.

Each encoder module registers its class with `register`; `parse` checks a name against the
table without loading anything (configs are validated with it), `create` builds an instance.
Adding an encoder is one module in this folder plus its test: `_discover` imports every
module of the package, so nothing else needs to know it exists.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .base import Encoder
from .names import Name

_REGISTRY: dict[str, type[Encoder]] = {}
_DISCOVERED = False


def register(*bases: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: the encoder answers to these base names (``sscd``, ``onnx``...)."""

    def deco(cls: type[Encoder]) -> type[Encoder]:
        for b in bases:
            if b in _REGISTRY and _REGISTRY[b] is not cls:
                raise RuntimeError(f"encoder name {b!r} registered twice ({_REGISTRY[b].__name__}, {cls.__name__})")
            _REGISTRY[b] = cls
        return cls

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        importlib.import_module(f"{__package__}.{info.name}")
    _DISCOVERED = True


def known() -> dict[str, type[Encoder]]:
    """Base name -> class of every registered encoder."""
    _discover()
    return dict(_REGISTRY)


def choices() -> str:
    """The registered names for messages: ``gist, sscd, ..., onnx:PATH, keras:PATH``."""
    reg = known()
    return ", ".join(f"{b}:PATH" if getattr(c, "takes_path", False) else b for b, c in sorted(reg.items()))


def parse(name: str | Name, what: str = "encoder") -> Name:
    """The parsed name, checked against the registry; nothing is loaded. UserError if unknown."""
    n = name if isinstance(name, Name) else Name.parse(name)
    cls = known().get(n.base)
    if cls is None:
        raise UserError(f"unknown {what} {str(name)!r}; choose one of: {choices()}")
    takes_path = getattr(cls, "takes_path", False)
    if takes_path and not n.argument:
        raise UserError(f"{what} {str(name)!r} needs a file: {n.base}:PATH")
    if not takes_path and n.argument is not None:
        raise UserError(f"unknown {what} {str(name)!r}; choose one of: {choices()}")
    if n.resize is not None and not getattr(cls, "takes_resize", False):
        raise UserError(f"{what} {str(name)!r}: {n.base} takes no @resize suffix (its input size is fixed)")
    return n


def encoder_class(name: str | Name) -> type[Encoder]:
    return known()[parse(name).base]


def create(name: str | Name, *, trainable: bool = True, weights: str | None = "imagenet",
           folder: str | Path | None = None) -> Encoder:
    """An encoder instance. `trainable`: a Keras backbone whose weights will train (ignored by
    frozen-only encoders); `weights`: ``imagenet``, None (random) or a weights file for a Keras
    backbone; `folder`: a model folder holding the encoder's own files (`Encoder.files_in`)."""
    n = parse(name)
    return known()[n.base].create(n, trainable=trainable, weights=weights,
                                  folder=Path(folder) if folder is not None else None)


def is_trainable(name: str | Name) -> bool:
    """Whether an encoder of this name CAN train (a Keras backbone), without loading it."""
    return bool(getattr(encoder_class(name), "can_train", False))


def available(name: str | Name) -> bool:
    """True when the encoder can be created here (its optional files and runtime installed)."""
    try:
        cls = encoder_class(name)
        return bool(cls.available(parse(name)))
    except UserError:
        return False
