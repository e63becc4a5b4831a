"""Fingerprints of a stage's inputs: what a finished artifact was made from.

Why fingerprints and not paths: users move and copy data, so a path proves nothing; and a
re-run that names OTHER inputs into a finished output must be refused, not answered with
"already complete". Each kind of input has the cheapest fingerprint that still tells two
inputs apart:

* an image folder: the sorted (file name, size) list - stat only, so a million images cost
  seconds, and a copied folder keeps its fingerprint;
* small files (PCA, normaliser, descriptor HDF5, manifests, model weights): their bytes;
* large files (feature tables, > 64 MiB): size and the bytes of the first and last MiB, plus
  the table's own config sidecar, which names what the table was computed from;
* numbers (weights, PCA arrays): their values, so re-saving the same weights keeps it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

BIG_FILE = 64 << 20
EDGE = 1 << 20


def _hex(h) -> str:
    return h.hexdigest()[:16]


def of_bytes(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return _hex(h)


def of_file(path: str | os.PathLike) -> str:
    """Bytes of a small file; size + first/last MiB of a big one."""
    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= BIG_FILE:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        else:
            h.update(f"size={size}".encode())
            h.update(fh.read(EDGE))
            fh.seek(size - EDGE)
            h.update(fh.read(EDGE))
    return _hex(h)


def of_files(paths: Iterable[str | os.PathLike]) -> str:
    """One fingerprint over several files (their names and contents), in the given order."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0" + of_file(p).encode() + b"\0")
    return _hex(h)


def of_image_list(files: Sequence) -> str:
    """(id, file name, size) of every listed image (`formats.images.ImageFile`s), in order."""
    h = hashlib.sha256()
    for f in files:
        try:
            size = f.path.stat().st_size
        except OSError:
            size = -1
        h.update(f"{f.id}\0{f.path.name}\0{size}\n".encode())
    return _hex(h)


def of_arrays(arrays: Iterable[np.ndarray]) -> str:
    """Values (and shapes) of arrays, e.g. a model's weights or a PCA's components."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return _hex(h)
