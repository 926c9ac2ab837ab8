"""Setting values handed to the keystore tool without files on any shared filesystem.

Each value goes into a memfd (anonymous memory, gone with the last descriptor), which the tool
inherits and opens as `/proc/self/fd/N`: an absolute path to a file holding the exact bytes, which
is all `add-file` asks for. Nothing is left to clean up when espm or the tool is killed, and
nothing lands on a tmpfs that other containers of the pod, or later restarts, could see (a pid-named
folder on /dev/shm was removable only by guessing whether its pid was alive, and pids mean nothing
across PID namespaces). Where memfd_create is refused (an old kernel, a strict seccomp profile), the
values go into 0600 files in the caller's 0700 folder, removed with it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from espm.system.files import write_all


def _memfd(value: bytes) -> int | None:
    try:
        fd = os.memfd_create("espm-keystore-value", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return None
    try:
        write_all(fd, value)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def value_files(
    values: Mapping[str, bytes], names: Sequence[str], fallback: Path
) -> Iterator[tuple[list[tuple[str, str]], list[int]]]:
    """(name, absolute path) pairs for add-file, and the descriptors the tool must inherit."""
    fds: list[int] = []
    pairs: list[tuple[str, str]] = []
    try:
        for name in names:
            value = values[name]
            fd = _memfd(value)
            if fd is not None:
                fds.append(fd)
                pairs.append((name, f"/proc/self/fd/{fd}"))
                continue
            fallback.mkdir(mode=0o700, exist_ok=True)
            file = fallback / name
            out = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                write_all(out, value)
            finally:
                os.close(out)
            pairs.append((name, str(file)))
        yield pairs, fds
    finally:
        for fd in fds:
            os.close(fd)
