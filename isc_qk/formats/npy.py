"""Writing ``.npy`` files row by row through ordinary writes, never through a memory map.

Why not `np.lib.format.open_memmap(mode="w+")`: its pages are written back lazily, and a page
that meets a full disk (or a quota, or a file-size limit) kills the process with SIGBUS, with no
error message and no clean-up. Here the file's blocks are reserved when it is created
(`atomic.reserve_space`: a full disk is an OSError before any work) and rows are written with
`os.pwrite` (any later failure is an OSError too). Reading stays memory-mapped (`np.load`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import reserve_space


def create(path: str | os.PathLike, shape: tuple[int, int], dtype: str | np.dtype) -> int:
    """A new .npy of `shape` and `dtype` (C order), its blocks reserved; returns the data offset."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        offset = fh.tell()
        fh.flush()
        reserve_space(fh.fileno(), offset + int(np.prod(shape)) * dtype.itemsize, path)
    return offset


def layout(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) of an existing .npy whose data is all there, else None."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (OSError, ValueError, EOFError, SyntaxError):
        return None
    if fortran or os.path.getsize(path) < offset + int(np.prod(shape)) * dtype.itemsize:
        return None
    return shape, dtype, offset


class RowWriter:
    """Writes whole rows at row positions of an existing .npy (see `create`), durably."""

    def __init__(self, path: str | os.PathLike) -> None:
        found = layout(path)
        if found is None or len(found[0]) != 2:
            raise UserError(f"{path}: not a complete 2-D .npy file")
        self.path = Path(path)
        self.shape, self.dtype, self.offset = found
        self.row_bytes = int(self.shape[1]) * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_WRONLY)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
        at = self.offset + start * self.row_bytes
        while len(data):
            n = os.pwrite(self.fd, data, at)
            data, at = data[n:], at + n

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
