"""The one exception type users see, and the one-line wording of what the system refused.

Anything a user can cause (a missing file, a wrong shape, NaN in a descriptor) is raised as
`UserError` with a one-line message; the CLI prints it and exits non-zero, without a
traceback. Bugs stay ordinary exceptions so that they do show a traceback.

Resource failures (a full disk, a quota, a file-size limit, no memory) are the user's too:
`is_resource_error` tells them apart and `os_error_line` words any OSError on one line (h5py
puts a multi-line report in its messages; numpy's short writes carry no errno at all).
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with the user's input or settings, explained in one line."""


#: errnos that mean "the machine ran out of something", not "the input is wrong"
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM, errno.EIO})

_SHORT_WRITE = "requested and"  # numpy's tofile/np.save on a full disk: "N requested and M written"


def is_resource_error(e: BaseException) -> bool:
    """A full disk, quota, file-size limit, I/O error or exhausted memory (not a bad input)."""
    if isinstance(e, MemoryError):
        return True
    if not isinstance(e, OSError):
        return False
    return e.errno in RESOURCE_ERRNOS or (e.errno is None and _SHORT_WRITE in str(e) and "written" in str(e))


def os_error_line(e: BaseException) -> str:
    """'FILE: reason' on one line for any OSError (or MemoryError)."""
    if isinstance(e, MemoryError):
        return "out of memory"
    if isinstance(e, OSError) and e.errno is None and _SHORT_WRITE in str(e):
        return "no space left on device (a write was cut short)"
    reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else (getattr(e, "strerror", None) or str(e))
    reason = " ".join(str(reason).split()) or type(e).__name__
    name = getattr(e, "filename", None)
    return f"{name}: {reason}" if name else reason
