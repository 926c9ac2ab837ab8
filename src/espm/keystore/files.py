"""Files beside the keystore: atomic replacement with fsyncs, and work folders owned by a lock.

- `replace_atomically` writes a temporary file in the target's folder, fsyncs it, renames it over
  the target and fsyncs the folder: a crash leaves the old file or the new one, and a failure
  (a full disk) leaves neither a partial file nor the temporary one.
- A work folder is owned through an exclusive `flock` on an open descriptor of the folder, not
  through a pid: pids mean nothing across PID namespaces (every container's first process is
  pid 1), while the lock dies with its holder, however it dies. A folder whose lock can be taken
  is abandoned and may be removed; one whose lock is held belongs to a live manager, in whatever
  namespace, and is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
from pathlib import Path

_ATTEMPTS = 5


def fsync_dir(folder: Path) -> None:
    """Make a rename or an unlink in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_atomically(path: Path, data: bytes, mode: int = 0o600, tmp: Path | None = None) -> None:
    """Replace `path` by a file holding `data`, through `tmp` (default `.NAME.tmp` beside it).

    Raises OSError; the temporary file never outlives a failure.
    """
    tmp = tmp or path.with_name(f".{path.name}.tmp")
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
    fsync_dir(path.parent)


class LockedFolder:
    """A fresh folder held through an exclusive lock until `remove()` (or the holder's end)."""

    def __init__(self, parent: Path, prefix: str) -> None:
        for _ in range(_ATTEMPTS):
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            fd = _try_lock(path)
            if fd is None:
                continue  # another manager's sweep took it before us: it removes it
            self.path = path
            self._fd = fd
            return
        raise OSError(f"cannot lock a work folder in {parent}")

    def remove(self) -> None:
        """Remove the folder and everything in it, then let go of the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _try_lock(path: Path, directory: bool = True) -> int | None:
    """An open descriptor of `path` holding its exclusive lock, or None when someone holds it.

    Also None when `path` was removed or replaced meanwhile: the lock must be on the folder (or
    file) that is at `path` now, or a sweep that removed it would not have seen us.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else os.O_NONBLOCK)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            return fd
    except OSError:
        pass  # EWOULDBLOCK: held by a live holder; ENOENT: removed meanwhile
    os.close(fd)
    return None


def remove_abandoned(parent: Path, prefix: str, suffix: str = "", directory: bool = True) -> list[str]:
    """Remove the folders (or files) in `parent` named `prefix*suffix` whose lock nobody holds;
    their names."""
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in entries:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        path = parent / name
        fd = _try_lock(path, directory)
        if fd is None:
            continue  # a live manager's, or gone
        try:
            # Removed while locked: its maker, should it still be starting, sees it gone.
            if directory:
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
            removed.append(name)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def create_locked_file(parent: Path, prefix: str, suffix: str) -> tuple[Path, int]:
    """A new empty 0600 file `prefix<random>suffix` in `parent`, open for writing and locked."""
    for _ in range(_ATTEMPTS):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except OSError:
            pass  # a sweep caught it between the create and the lock: it removes it
        os.close(fd)
    raise OSError(f"cannot lock a temporary file in {parent}")
