"""The keystore written by espm itself (format.py), without a JVM and without value files.

Rules of this module:
- The new file is a temporary file in the keystore's own folder (locked while written, so a sweep
  never takes a live one), fsynced, renamed over the keystore, and the folder fsynced; it keeps
  the old file's mode and owner. Values go from memory to the encrypted file: no value file, no
  work folder.
- It keeps the file's format version, its password flag and every entry it was not asked to
  change (`keystore.seed`, `bootstrap.password` included), in their order.
- It never overwrites a file it cannot parse: the error names the cause and the file stays.
- A missing keystore is created (with a fresh `keystore.seed`) in the format of the Elasticsearch
  version given, or learned from the node; without one, it is not created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from espm.keystore import format as ksf
from espm.keystore.files import create_locked_file, write_all
from espm.keystore.writer import UpdateError, current_stat, describe_os_error, install

TMP_SUFFIX = ".tmp"


def tmp_prefix(path: Path) -> str:
    """Temporary files of the native writer beside `path`: `.NAME.espm-<random>.tmp`."""
    return f".{path.name}.espm-"


class PasswordError(UpdateError):
    """The keystore's password is wrong: retrying will not help until something changes."""


class UnreadableKeystore(UpdateError):
    """The file is not a keystore in a format the native writer knows; it was left untouched."""


def read_keystore(path: Path, password: str) -> ksf.Keystore | None:
    """The decrypted keystore at `path`; None when there is none. Raises UpdateError subclasses."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UpdateError(f"cannot read {path}: {err.strerror}") from None
    try:
        return ksf.decode(data, password)
    except ksf.WrongPasswordError as err:
        hint = "" if password else "; set KEYSTORE_PASSWORD_FILE"
        raise PasswordError(f"{path}: {err}{hint}") from None
    except ksf.KeystoreFormatError as err:
        raise UnreadableKeystore(f"{path}: {err}") from None


def rewrite(
    path: Path,
    values: Mapping[str, bytes],
    add: Sequence[str],
    remove: Sequence[str],
    password: str = "",
    es_version: str = "",
) -> bool:
    """Set `add`, remove `remove`, keep the rest; False when there is no keystore and nothing to add."""
    old = current_stat(path)
    keystore = read_keystore(path, password)
    if keystore is None:
        if not add:
            return False
        if not es_version:
            raise UpdateError(
                f"there is no keystore at {path}, and no Elasticsearch version to choose its format "
                "from: set KEYSTORE_ES_VERSION"
            )
        try:
            keystore = ksf.Keystore.new(ksf.format_for_es_version(es_version), has_password=bool(password))
        except ValueError as err:
            raise UpdateError(str(err)) from None
        old = None
    present = [name for name in remove if name in keystore.entries]
    try:
        changed = keystore.with_entries({name: values[name] for name in add}, present)
        data = ksf.encode(changed, password)
    except (ValueError, ksf.KeystoreFormatError) as err:
        raise UpdateError(str(err)) from None
    try:
        tmp, fd = create_locked_file(path.parent, tmp_prefix(path), TMP_SUFFIX)
    except OSError as err:
        raise UpdateError(f"cannot create a temporary file in {path.parent}: {err.strerror or err}") from None
    try:
        write_all(fd, data)
        install(tmp, path, old)
    except OSError as err:
        raise UpdateError(describe_os_error(err)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # gone already when installed
        os.close(fd)
    return True


class NativeWriter:
    """Writes the keystore at `path` with format.py; the key derivation runs off the event loop."""

    name = "native"

    def __init__(self, path: Path, password_file: Path | None = None, es_version: str = "") -> None:
        self.path = path
        self.password_file = password_file
        self.es_version = es_version

    def password(self) -> str:
        """Read at each write, so a fixed password file is picked up without a restart."""
        if self.password_file is None:
            return ""
        from espm.config import read_password_file

        try:
            return read_password_file(self.password_file)
        except OSError as err:
            raise UpdateError(
                f"cannot read KEYSTORE_PASSWORD_FILE {self.password_file}: {err.strerror}"
            ) from None

    async def write(self, values: Mapping[str, bytes], add: Sequence[str], remove: Sequence[str]) -> bool:
        password = self.password()
        # PBKDF2 (210,000 rounds from format 6) holds the GIL released: the loop keeps serving.
        return await asyncio.to_thread(rewrite, self.path, values, add, remove, password, self.es_version)
