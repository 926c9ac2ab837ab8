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
- A rewrite keeps the file's salt and draws a fresh IV, so the key decoding derived serves the
  encryption too (format.py keeps the last key): one PBKDF2 per read-change-write at most, and none
  for the file it wrote last. AES-GCM stays sound under one key while every IV is new.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from espm.keystore import format as ksf
from espm.keystore.files import create_locked_file
from espm.keystore.writer import UpdateError, current_stat, describe_os_error, install
from espm.system.files import write_all

TMP_SUFFIX = ".tmp"
T = TypeVar("T")


def tmp_prefix(path: Path) -> str:
    """Temporary files of the native writer beside `path`: `.NAME.espm-<random>.tmp`."""
    return f".{path.name}.espm-"


class PasswordError(UpdateError):
    """The keystore's password is wrong: retrying will not help until something changes."""


class UnreadableKeystore(UpdateError):
    """The file is not a keystore in a format the native writer knows; it was left untouched."""


def read_keystore(path: Path, password: str) -> ksf.Keystore | None:
    """The decrypted keystore at `path`; None when there is none. Raises UpdateError subclasses."""
    data = read_file(path)
    return None if data is None else decode_keystore(path, data, password)


def read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UpdateError(f"cannot read {path}: {err.strerror}") from None


def decode_keystore(path: Path, data: bytes, password: str) -> ksf.Keystore:
    try:
        return ksf.decode(data, password)
    except ksf.WrongPasswordError as err:
        hint = "" if password else "; set KEYSTORE_PASSWORD_FILE"
        raise PasswordError(f"{path}: {err}{hint}") from None
    except ksf.KeystoreFormatError as err:
        raise UnreadableKeystore(f"{path}: {err}") from None


def changed(
    keystore: ksf.Keystore | None,
    values: Mapping[str, bytes],
    add: Sequence[str],
    remove: Sequence[str],
    password: str = "",
    es_version: str = "",
    path: Path | None = None,
) -> ksf.Keystore | None:
    """`keystore` with `add` set and `remove` gone, the rest kept in order; a new keystore (fresh
    seed, format of `es_version`) when there is none; None when there is none and nothing to add."""
    if keystore is None:
        if not add:
            return None
        if not es_version:
            raise UpdateError(
                f"there is no keystore at {path}, and no Elasticsearch version to choose its format "
                "from: set KEYSTORE_ES_VERSION"
            )
        try:
            keystore = ksf.Keystore.new(ksf.format_for_es_version(es_version), has_password=bool(password))
        except ValueError as err:
            raise UpdateError(str(err)) from None
    present = [name for name in remove if name in keystore.entries]
    try:
        return keystore.with_entries({name: values[name] for name in add}, present)
    except (ValueError, ksf.KeystoreFormatError) as err:
        raise UpdateError(str(err)) from None


def save(path: Path, keystore: ksf.Keystore, password: str, old: os.stat_result | None) -> bytes:
    """Encrypt `keystore` into a locked temporary file beside `path`, install it over `path`; the
    bytes written."""
    try:
        # The salt it was read with, and a fresh IV: the key is the one decoding derived (format.py
        # keeps the last one), so a change costs no second PBKDF2 (210,000 rounds from format 6).
        data = ksf.encode(keystore, password, salt=keystore.salt)
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
    return data


def in_thread(work: Callable[..., T], *args: Any) -> Awaitable[T]:
    """Run `work(*args)` in a thread of its own, which ends with it.

    PBKDF2 (210,000 rounds from format 6, 110 ms and more) runs with the GIL released: meanwhile
    the loop keeps serving and signal handlers keep running at once, which they could not behind
    a long call on the main thread. Not the loop's executor: its idle threads would stay for good,
    and the manager is single-threaded but while a keystore is written (the supervisor forks the
    managed process, and its child runs a little Python before exec).
    """
    import asyncio  # here: `espm keystore sync` never needs it, and it costs 10 ms to import

    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work(*args)
        except BaseException as err:  # handed to the awaiting task, which decides
            error = err
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="espm-keystore-write", daemon=True).start()
    return done


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
        return await in_thread(self._rewrite, values, add, remove, password)

    def _rewrite(
        self, values: Mapping[str, bytes], add: Sequence[str], remove: Sequence[str], password: str
    ) -> bool:
        old = current_stat(self.path)
        current = read_keystore(self.path, password)
        new = changed(current, values, add, remove, password, self.es_version, self.path)
        if new is None:
            return False
        save(self.path, new, password, old if current is not None else None)
        return True
