"""Fingerprints of a stage's inputs: what a finished artifact was made from.

Why fingerprints and not paths: users move and copy data, so a path proves nothing; and a
re-run that names OTHER inputs into a finished output must be refused, not answered with
"already complete". Each kind of input has the cheapest fingerprint that still tells two
inputs apart:

* an image folder: the sorted (file name, size) list and a sample of each file's content (its
  first and last 4 KiB, `SAMPLE`): a million images cost one small read each, and a copied
  folder keeps its fingerprint. It tells apart added, removed or renamed images, any change of
  size, and any change in a file's first or last 4 KiB (a JPEG's header and last rows: in
  practice any other picture); NOT a same-size change confined to the middle of a file larger
  than 8 KiB. Time stamps are not used (copies change them, edits can keep them). Records
  written before the sample existed (``of_image_list_v1``: names and sizes) are still accepted;
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
SAMPLE = 4096  # bytes read from each end of every image file
_SAMPLES: dict[tuple, str] = {}  # (path, size, mtime, inode, ctime) -> sample hash, within one process


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
    """(id, file name, size, content sample) of every listed image (`formats.images.ImageFile`s)."""
    h = hashlib.sha256()
    for f in files:
        size, sample = _sample(f.path)
        h.update(f"{f.id}\0{f.path.name}\0{size}\0{sample}\n".encode())
    return "i2" + _hex(h)


def of_image_list_v1(files: Sequence) -> str:
    """What versions before the content sample recorded: (id, file name, size) only."""
    h = hashlib.sha256()
    for f in files:
        try:
            size = f.path.stat().st_size
        except OSError:
            size = -1
        h.update(f"{f.id}\0{f.path.name}\0{size}\n".encode())
    return _hex(h)


def _sample(path: Path) -> tuple[int, str]:
    """(size, hash of the first and last `SAMPLE` bytes); (-1, "") for a file that cannot be read.

    Remembered per process by (path, size, mtime, inode, ctime), so a pipeline that checks one
    folder in every stage reads each file once."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, ""
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _SAMPLES:
        try:
            with open(path, "rb") as fh:
                head = fh.read(SAMPLE)
                tail = b""
                if st.st_size > 2 * SAMPLE:
                    fh.seek(st.st_size - SAMPLE)
                    tail = fh.read(SAMPLE)
        except OSError:
            return st.st_size, ""
        _SAMPLES[key] = hashlib.sha256(head + b"\0" + tail).hexdigest()[:16]
    return st.st_size, _SAMPLES[key]


def of_arrays(arrays: Iterable[np.ndarray]) -> str:
    """Values (and shapes) of arrays, e.g. a model's weights or a PCA's components."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return _hex(h)
