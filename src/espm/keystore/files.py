"""Files beside the keystore: work folders and temporary files owned by a lock.

(Atomic replacement with its fsyncs is `espm.system.files`.)

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
from pathlib import Path

_ATTEMPTS = 5


class LockedFolder:
    """A fresh folder held through an exclusive lock until `remove()` (or the holder's end)."""

    def __init__(self, parent: Path, prefix: str) -> None:
        for _ in range(_ATTEMPTS):
            path = parent / f"{prefix}{_random_part()}"
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            fd = _try_lock(path)
            if fd is None:
                continue  # another manager's sweep took it before us: it removes it
            self.path = path
            self._fd = fd
            return
        raise OSError(f"cannot lock a work folder in {parent}")

    def remove(self) -> None:
        """Remove the folder and everything in it, then let go of the lock."""
        _rmtree(self.path)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _random_part() -> str:
    # os.urandom, not tempfile or secrets: those import shutil (bz2, lzma) and random, about
    # 1 MiB of RSS that a running manager keeps for nothing else.
    return os.urandom(6).hex()


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _rmtree(path: Path) -> None:
    """Remove the folder `path` and everything in it, errors ignored, never through a link.

    shutil.rmtree's way (descriptors opened with O_NOFOLLOW, names relative to them) without
    importing shutil, which brings bz2 and lzma: 0.6 MiB of RSS kept by the running manager.
    """
    try:
        fd = os.open(path, _OPEN_DIR)
    except OSError:
        return
    try:
        _empty(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _empty(fd: int) -> None:
    with contextlib.suppress(OSError), os.scandir(fd) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
                except OSError:
                    continue  # gone, or replaced by a link meanwhile: not followed
                try:
                    _empty(sub)
                finally:
                    os.close(sub)
                with contextlib.suppress(OSError):
                    os.rmdir(entry.name, dir_fd=fd)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=fd)


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
                _rmtree(path)
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
        path = parent / f"{prefix}{_random_part()}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except OSError:
            pass  # a sweep caught it between the create and the lock: it removes it
        os.close(fd)
    raise OSError(f"cannot lock a temporary file in {parent}")
