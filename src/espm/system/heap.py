"""Give the C heap's free pages back to the kernel after a burst of work (glibc's malloc_trim).

An update and its reload allocate and free megabytes (the keystore, TLS handshakes, answers);
glibc keeps the freed pages of its heap until something asks for them, so an idle manager stays
as large as its busiest moment. malloc_trim(0) returns every whole free page, anywhere in the
heap: 0.2 MiB on the everything-on benchmark (bench/bench_memory.py), in well under a
millisecond. Another C library (musl) has no malloc_trim: then this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from espm.system.libc import libc

_trim: Callable[[int], int] | None = None
_looked = False


def trim() -> None:
    """Return the heap's free pages to the kernel, where the C library can."""
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            fn = libc.malloc_trim
        except AttributeError:
            return
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_size_t]
        _trim = fn
    if _trim is not None:
        _trim(0)
