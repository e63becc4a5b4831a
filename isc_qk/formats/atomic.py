"""Atomic writes: every artifact appears under its final name complete, or not at all.

A temporary file in the SAME folder, then `os.replace`, so a crash, a Ctrl-C or a full disk
never leaves a half-written file under the name a later stage trusts. Big files reserve their
blocks first (`reserve_space`), so a full disk is an error before the work, not a SIGBUS in it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give artifacts the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_keras_weights(model, path: str | os.PathLike) -> None:
    """`model.save_weights` atomically; Keras insists the name ends in `.weights.h5`, so the
    temporary file (same folder, then `os.replace`) keeps that suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ensure_room(path, sum(int(np.prod(w.shape)) * 4 for w in model.weights))
    tmp = path.with_name(f".{path.name.removesuffix('.weights.h5')}.{os.getpid()}.tmp.weights.h5")
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """`np.savez` atomically (the name is kept exactly; numpy would append .npz to a bare name)."""
    ensure_room(path, sum(np.asarray(a).nbytes for a in arrays.values()))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object (every JSON file of the tool is one); UserError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(obj).__name__ if obj is not None else 'null'}")
    return obj


ROOM_MARGIN = 64 << 10  # what a container format adds to its payload (HDF5 metadata, zip directory)


def ensure_room(path: str | os.PathLike, nbytes: int) -> None:
    """OSError (ENOSPC, EFBIG, EDQUOT...) now if ~`nbytes` (plus `ROOM_MARGIN`) cannot be written
    at `path`: a probe file beside it gets those blocks reserved (`reserve_space`), then goes.

    Why: libraries that write through their own buffers (HDF5 via h5py, and Keras through it)
    do not fail cleanly when a write fails: h5py leaves objects behind that crash the
    interpreter (SIGSEGV) when they are collected. So a file written by such a library is
    written only where its size is known to fit (a full disk, a quota, a file-size limit);
    files written in parts reserve their blocks themselves (`reserve_space`, `formats.npy`).
    Another process filling the disk between the probe and the write is not covered."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".room.tmp", dir=folder)
    try:
        reserve_space(fd, int(nbytes) + ROOM_MARGIN, path)
    finally:
        os.close(fd)
        os.unlink(probe)


def reserve_space(fd: int, size: int, path: str | os.PathLike) -> None:
    """Give the open file `fd` its `size` bytes of disk blocks now (posix_fallocate).

    Why: a memory-mapped or sparse file that meets a full disk later kills the process with
    SIGBUS, or fails after hours of work; reserving the blocks first turns a full disk into an
    OSError (ENOSPC) before the work starts. Where the filesystem cannot allocate ahead, the
    free space is compared with `size` instead and the file is extended sparsely.
    """
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            raise OSError(e.errno, e.strerror, os.fspath(path)) from None
    except AttributeError:  # pragma: no cover - no posix_fallocate on this platform
        pass
    have = os.fstat(fd).st_size
    st = os.fstatvfs(fd)
    if size - have > st.f_bavail * st.f_frsize:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    os.ftruncate(fd, max(size, have))


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
