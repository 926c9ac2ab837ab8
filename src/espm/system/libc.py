"""The C library, loaded once through ctypes, and a failed call's errno raised as Python would."""

from __future__ import annotations

import ctypes
import os

# The symbols of the running process (glibc or musl); use_errno so that errno survives the call.
libc = ctypes.CDLL(None, use_errno=True)


def errno_error() -> OSError:
    """The OSError for the errno the last libc call left (FileNotFoundError for ENOENT, ...)."""
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def checked(result: int) -> int:
    """The result of a libc call that returns -1 on failure, or the OSError its errno names."""
    if result < 0:
        raise errno_error()
    return result
