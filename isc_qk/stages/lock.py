"""One writer per output: an exclusive `fcntl.flock` on a hidden lock file beside the output.

A second process that names the same output gets a one-line error with the holder's PID
instead of deleting the first one's temporary files or half-written checkpoints. The lock
belongs to the open file description, so it dies with its process (kill -9 included). The
lock file is removed when the lock is released; a process that locked a file another one had
just removed notices (the name no longer points at its file) and tries again, so two writers
can never both hold "the" lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError


def _acquire(lock_file: Path, what: str) -> int:
    import fcntl

    _not_someone_elses(lock_file)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(f"{what} is being written by another process (PID {holder}); "
                            "wait for it to finish or stop it, then run again") from None
        try:
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder released and removed it between our open and our lock: again


def _not_someone_elses(lock_file: Path) -> None:
    """A lock file holds a PID (or nothing); any other file of that name is not ours to remove."""
    try:
        if lock_file.is_symlink() or (lock_file.exists() and not lock_file.is_file()):
            raise UserError(f"{lock_file}: exists and is not a lock file of isc-qk; move it away")
        if lock_file.is_file():
            with open(lock_file, "rb") as fh:
                head = fh.read(33)
            if len(head) > 32 or not head.strip().isdigit() and head.strip():
                raise UserError(f"{lock_file}: exists and is not a lock file of isc-qk; move it away")
    except OSError:
        pass


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock on `lock_file` for the block; UserError if another process holds it."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock_file, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file)  # while still holding it: a waiting opener will see the name is gone
        os.close(fd)
