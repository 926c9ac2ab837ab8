"""The writer port: what the updater asks of whoever writes the keystore (native or tool), and
the last step they share: put a complete new file in place of the old one."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from espm.keystore.crypto import sha256
from espm.system.files import move_into_place

KEYSTORE_NAME = "elasticsearch.keystore"
# What the tool and the node give a keystore they create: rw-rw----.
KEYSTORE_MODE = 0o660


class UpdateError(Exception):
    """An update failed; the message says what failed and what the other side said."""


class KeystoreWriter(Protocol):
    """Changes the keystore file at one path, all or nothing."""

    @property
    def name(self) -> str:
        """`native` or `tool`: which one wrote (or tried) last, for the log and the status."""
        ...

    async def write(self, values: Mapping[str, bytes], add: Sequence[str], remove: Sequence[str]) -> bool:
        """Set the settings `add` (their bytes from `values`) and remove `remove`, leaving every
        other entry as it is; False when nothing was due (no keystore, and nothing to put in
        one). Raises UpdateError; the old file is then untouched."""
        ...


def sha256_file(path: Path) -> str:
    # Whole: a keystore is kilobytes (a megabyte at thousands of settings), read whole to write.
    return sha256(path.read_bytes()).hex()


def current_stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def install(new: Path, path: Path, old: os.stat_result | None) -> None:
    """Move the complete file `new` (in `path`'s folder) over `path`, durably.

    It gets the old file's mode and owner (a new keystore: rw-rw----, ours); a crash at any point
    leaves the old file or the new one. Raises OSError or UpdateError.
    """
    if old is None:
        os.chmod(new, KEYSTORE_MODE)
    else:
        os.chmod(new, old.st_mode & 0o7777)
        keep_owner(new, old)
    move_into_place(new, path)


def keep_owner(target: Path, old: os.stat_result) -> None:
    """Give `target` the old keystore's owner (root may; another user gets a reason)."""
    if (old.st_uid, old.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.chown(target, old.st_uid, old.st_gid)
    except PermissionError:
        raise UpdateError(
            f"cannot keep the keystore's owner (uid {old.st_uid}, gid {old.st_gid}): espm runs as uid "
            f"{os.geteuid()} and may not give a file away; run espm as uid {old.st_uid} or as root"
        ) from None


def describe_os_error(err: OSError) -> str:
    return f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")
