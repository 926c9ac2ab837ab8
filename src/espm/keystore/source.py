"""The Secret directory as Kubernetes lays it out: one file per setting, read as exact bytes.

Kubernetes mounts a Secret as visible names that are symlinks through `..data`, itself a symlink
to a timestamped folder that it swaps atomically on update; names starting with `.` are its
bookkeeping and are skipped. A snapshot reads every value once, so an update works on one
consistent view even if a swap happens meanwhile (the next change event brings the new one).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from espm.config import SETTING_NAME
from espm.keystore.crypto import sha256


@dataclass(frozen=True)
class Snapshot:
    """The settings of the directory at one moment; values never leave this object but to files."""

    values: dict[str, bytes] = field(repr=False)
    invalid: tuple[str, ...] = ()
    # Valid names left out because they lead out of the directory (a symlink elsewhere).
    outside: tuple[str, ...] = ()

    @property
    def left_out(self) -> list[str]:
        """Every name in the directory that is not a setting here: invalid, or leading outside."""
        return sorted({*self.invalid, *self.outside})

    @property
    def names(self) -> list[str]:
        return sorted(self.values)

    def digest(self, name: str) -> str:
        """A fingerprint of one value, kept in memory only to skip unchanged settings."""
        return sha256(self.values[name]).hex()

    def fingerprint(self) -> str:
        """Changes when any name or value changes: the test for "really changed"."""
        parts: list[bytes] = []
        for name in self.names:
            parts.append(name.encode() + b"\0" + self.digest(name).encode() + b"\0")
        for name in self.invalid:
            parts.append(b"!" + name.encode() + b"\0")
        for name in self.outside:
            parts.append(b">" + name.encode() + b"\0")
        return sha256(b"".join(parts)).hex()


class SourceError(Exception):
    """The directory cannot be read."""


DATA = "..data"
_ATTEMPTS = 3


def valid_name(name: str) -> bool:
    """A name the updater may hand to the keystore: the tool's pattern, and never option-like.

    The tool's own pattern allows a leading `-`, but its command line would read such a name as
    an option (`--force`, `-x`, `--help`), so those are left out too.
    """
    return SETTING_NAME.fullmatch(name) is not None and not name.startswith("-")


def _inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath((path, root)) == root


def read_snapshot(directory: Path) -> Snapshot:
    """Read every visible setting of `directory`; invalid names are listed, not read.

    In a Kubernetes layout the settings are read from the folder `..data` points to, resolved
    once: that folder is complete the moment `..data` is swapped, before the visible links are
    fixed, and reading from it alone gives one version even if another swap comes meanwhile.

    Nothing outside `directory` is read: a name (or `..data`) whose link resolves elsewhere is
    left out, so a symlink to /etc/shadow cannot put that file in the keystore.
    """
    data = directory / DATA
    root = os.path.realpath(directory)
    for _ in range(_ATTEMPTS):
        if not data.is_dir():
            return _read_folder(directory, root)
        target = os.path.realpath(data)
        if not _inside(target, root):
            raise SourceError(f"{data} points outside {directory}: nothing is read from it")
        try:
            return _read_folder(Path(target), root, strict=True)
        except FileNotFoundError:
            continue  # swapped and the old folder removed while we read: read the new one
    raise SourceError(f"{data} kept changing while it was read")


def _read_folder(folder: Path, root: str, strict: bool = False) -> Snapshot:
    values: dict[str, bytes] = {}
    invalid: list[str] = []
    outside: list[str] = []
    try:
        entries = sorted(os.listdir(folder))
    except FileNotFoundError:
        if strict:
            raise
        raise SourceError(f"cannot list {folder}: it does not exist") from None
    except OSError as err:
        raise SourceError(f"cannot list {folder}: {err.strerror}") from None
    for name in entries:
        if name.startswith("."):
            continue
        path = folder / name
        if not path.is_file():
            if strict and not folder.exists():
                raise FileNotFoundError(folder)
            continue  # a folder, or a dangling link left by a swap under way
        if not valid_name(name):
            invalid.append(name)
            continue
        real = os.path.realpath(path)
        if not _inside(real, root):
            outside.append(name)
            continue
        try:
            value = _read_regular(real)
        except FileNotFoundError:
            if strict:
                raise
            continue  # removed between the listing and the read: the next event says so
        except OSError as err:
            raise SourceError(f"cannot read {path}: {err.strerror}") from None
        if value is None:
            continue  # replaced by something that is not a file meanwhile
        values[name] = value
    return Snapshot(values, tuple(invalid), tuple(outside))


def _read_regular(real: str) -> bytes | None:
    """The bytes of the regular file at the resolved path `real`, or None if it is not one.

    O_NOFOLLOW: a link put in place after the path was resolved is not followed out; O_NONBLOCK:
    a FIFO cannot hang the read.
    """
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
