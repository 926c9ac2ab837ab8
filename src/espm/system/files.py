"""Durable file replacement: a reader, or a crash at any point, sees the old file or the new one.

The new content goes to a temporary file in the target's own folder (a rename across file systems
is no rename), which is fsynced before it is renamed over the target; the folder is fsynced after
the rename, or the rename itself may be lost on a crash even though the data is on disk. A failure
(a full disk, a read-only folder) leaves neither a partial target nor the temporary file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_folder(folder: Path) -> None:
    """Make a rename, a creation or an unlink in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, data: bytes, mode: int = 0o600, tmp: Path | None = None) -> None:
    """Replace `path` by a file holding `data`, through `tmp` (default `.NAME.tmp` beside it).

    `mode` is the new file's (before the umask). Raises OSError; the temporary file never
    outlives a failure.
    """
    tmp = tmp or path.with_name(f".{path.name}.tmp")
    # O_NOFOLLOW: a symbolic link planted at the temporary name must not redirect the write.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def move_into_place(new: Path, path: Path) -> None:
    """Rename the complete file `new` (in `path`'s folder) over `path`, durably. Raises OSError."""
    fd = os.open(new, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(new, path)
    fsync_folder(path.parent)
