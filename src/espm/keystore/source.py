"""The Secret directory as Kubernetes lays it out: one file per setting, read as exact bytes.

Kubernetes mounts a Secret as visible names that are symlinks through `..data`, itself a symlink
to a timestamped folder that it swaps atomically on update; names starting with `.` are its
bookkeeping and are skipped. A snapshot reads every value once, so an update works on one
consistent view even if a swap happens meanwhile (the next change event brings the new one).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from espm.config import SETTING_NAME


@dataclass(frozen=True)
class Snapshot:
    """The settings of the directory at one moment; values never leave this object but to files."""

    values: dict[str, bytes] = field(repr=False)
    invalid: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return sorted(self.values)

    def digest(self, name: str) -> str:
        """A fingerprint of one value, kept in memory only to skip unchanged settings."""
        return hashlib.sha256(self.values[name]).hexdigest()

    def fingerprint(self) -> str:
        """Changes when any name or value changes: the test for "really changed"."""
        h = hashlib.sha256()
        for name in self.names:
            h.update(name.encode() + b"\0" + self.digest(name).encode() + b"\0")
        for name in self.invalid:
            h.update(b"!" + name.encode() + b"\0")
        return h.hexdigest()


class SourceError(Exception):
    """The directory cannot be read."""


DATA = "..data"
_ATTEMPTS = 3


def read_snapshot(directory: Path) -> Snapshot:
    """Read every visible setting of `directory`; invalid names are listed, not read.

    In a Kubernetes layout the settings are read from the folder `..data` points to, resolved
    once: that folder is complete the moment `..data` is swapped, before the visible links are
    fixed, and reading from it alone gives one version even if another swap comes meanwhile.
    """
    data = directory / DATA
    for _ in range(_ATTEMPTS):
        if not data.is_dir():
            return _read_folder(directory)
        try:
            return _read_folder(Path(os.path.realpath(data)), strict=True)
        except FileNotFoundError:
            continue  # swapped and the old folder removed while we read: read the new one
    raise SourceError(f"{data} kept changing while it was read")


def _read_folder(folder: Path, strict: bool = False) -> Snapshot:
    values: dict[str, bytes] = {}
    invalid: list[str] = []
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
        if not SETTING_NAME.fullmatch(name):
            invalid.append(name)
            continue
        try:
            values[name] = path.read_bytes()
        except FileNotFoundError:
            if strict:
                raise
            continue  # removed between the listing and the read: the next event says so
        except OSError as err:
            raise SourceError(f"cannot read {path}: {err.strerror}") from None
    return Snapshot(values, tuple(invalid))
