"""`espm keystore [status|list|sync]`: the updater's status, and the keystore file listed or synced
once with the Secret directory, natively (no JVM, no running manager)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

HELP = """usage: espm keystore [status|list|sync] ...

  status   the keystore updater's status, from a running manager (the default:
           a plain `espm keystore [--url URL] [--json]` means `espm keystore status`)
  list     the setting names in a keystore file, sorted, one per line (never a value)
  sync     make a keystore file match a Secret directory once, and exit

`espm keystore COMMAND --help` says more. Exit status: 0 done, 1 failed (the cause on stderr),
2 usage or configuration error; status also exits 3 when the manager cannot be reached."""


class Failed(Exception):
    """A command failed; the message is its cause, the code its exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _default(name: str) -> str:
    from espm.config import VARIABLES

    value = os.environ.get(name)
    if value is not None:
        return value
    return next(v.default for v in VARIABLES if v.name == name)


def main(argv: Sequence[str]) -> int:
    """`list`, `sync` or `--help`; `status` is the client's (cli.py sends it there)."""
    args = list(argv)
    command = args[0] if args else "--help"
    if command in ("-h", "--help"):
        print(HELP)
        return EXIT_OK
    run = {"list": list_command, "sync": sync_command}.get(command)
    if run is None:
        print(f"espm keystore: unknown command {command!r} (expected status, list or sync)", file=sys.stderr)
        return EXIT_USAGE
    from espm.keystore.crypto import CryptoError, CryptoUnavailableError

    try:
        return run(args[1:])
    except Failed as err:
        print(f"espm keystore {command}: {err}", file=sys.stderr)
        return err.code
    except (CryptoUnavailableError, CryptoError) as err:  # no usable libcrypto, or a call failed
        print(f"espm keystore {command}: {err}", file=sys.stderr)
        return EXIT_FAILED


class _Exit(Failed):
    """argparse is done: --help printed (0), or a usage error (2)."""

    def __init__(self, code: int) -> None:
        super().__init__("", code)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        raise _Exit(exc.code if isinstance(exc.code, int) else EXIT_USAGE) from None


def _password(option: str | None) -> str:
    if not option:
        return ""
    from espm.config import read_password_file

    try:
        return read_password_file(Path(option))
    except OSError as err:
        raise Failed(f"cannot read the password file {option}: {err.strerror}") from None


# -- list ---------------------------------------------------------------------------------------


def list_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="espm keystore list",
        description="Print the setting names of a keystore file, sorted, one per line, as "
        "`elasticsearch-keystore list` does (keystore.seed included). Never a value.",
        epilog="exit status: 0 listed; 1 the file cannot be read (missing, not a keystore, a format "
        "other than 3-7, wrong password, tampered) or no usable libcrypto: the cause on stderr; 2 usage.",
    )
    parser.add_argument("path", nargs="?", default=_default("KEYSTORE_PATH"), help="default: KEYSTORE_PATH")
    parser.add_argument(
        "--password-file",
        default=os.environ.get("KEYSTORE_PASSWORD_FILE") or None,
        help="file holding the keystore's password (default: KEYSTORE_PASSWORD_FILE)",
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"path", "format", "has_password", "settings"}'
    )
    try:
        args = _parse(parser, argv)
    except _Exit as done:
        return done.code
    from espm.keystore import format as ksf

    path = Path(args.path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise Failed(f"cannot read {path}: {err.strerror}") from None
    try:
        keystore = ksf.decode(data, _password(args.password_file))
    except ksf.KeystoreFormatError as err:
        raise Failed(f"{path}: {err}") from None
    names = sorted(keystore.entries)
    if args.json:
        doc = {"path": str(path), "format": keystore.version, "has_password": keystore.has_password}
        print(json.dumps({**doc, "settings": names}))
    else:
        sys.stdout.write("".join(f"{name}\n" for name in names))
    return EXIT_OK


# -- sync ---------------------------------------------------------------------------------------


def sync_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="espm keystore sync",
        description="Make the keystore match the Secret directory once, as the updater does, and "
        "exit: settings written natively (no JVM), foreign entries and keystore.seed kept, the "
        "managed names recorded beside the keystore. A missing keystore is created in the format "
        "of KEYSTORE_ES_VERSION.",
        epilog="exit status: 0 the keystore matches the directory (written, or already in line); "
        "1 failed, the keystore left as it was (an unreadable directory, a keystore that cannot be "
        "read: not a keystore, a format other than 3-7, wrong password; a write that failed; no "
        "usable libcrypto): the "
        "cause on stderr; 2 usage or configuration (bad arguments, a missing keystore without "
        "KEYSTORE_ES_VERSION, or a version before 6.3).",
    )
    parser.add_argument(
        "--source", default=_default("KEYSTORE_SOURCE_DIR"), help="default: KEYSTORE_SOURCE_DIR"
    )
    parser.add_argument("--keystore", default=_default("KEYSTORE_PATH"), help="default: KEYSTORE_PATH")
    parser.add_argument(
        "--password-file",
        default=os.environ.get("KEYSTORE_PASSWORD_FILE") or None,
        help="file holding the keystore's password (default: KEYSTORE_PASSWORD_FILE)",
    )
    try:
        args = _parse(parser, argv)
    except _Exit as done:
        return done.code
    from espm.keystore import native_writer
    from espm.keystore.managed import managed_path, read_managed, record_managed
    from espm.keystore.plan import make_plan
    from espm.keystore.source import SourceError, read_snapshot
    from espm.keystore.writer import UpdateError, current_stat

    source, path = Path(args.source), Path(args.keystore)
    password = _password(args.password_file)
    es_version = os.environ.get("KEYSTORE_ES_VERSION", "").strip()
    try:
        snapshot = read_snapshot(source)
    except SourceError as err:
        raise Failed(str(err)) from None
    for name in snapshot.invalid:
        print(f"espm keystore sync: {name!r} left out: not a valid setting name", file=sys.stderr)
    for name in snapshot.outside:
        print(f"espm keystore sync: {name!r} left out: a link to a file outside {source}", file=sys.stderr)
    old = current_stat(path)
    try:
        current = native_writer.read_keystore(path, password)
    except UpdateError as err:
        raise Failed(str(err)) from None
    if current is None and snapshot.values:
        _check_version(path, es_version)
    record = managed_path(path)
    managed, problem = read_managed(record)
    if problem:
        print(f"espm keystore sync: {problem}", file=sys.stderr)
    digests = {name: snapshot.digest(name) for name in snapshot.names}
    applied = None
    if current is not None:
        # What the file holds now: only what differs from the directory is written.
        applied = {n: hashlib.sha256(v).hexdigest() for n, v in current.entries.items() if n in digests}
    plan = make_plan(digests, applied, managed)
    try:
        if plan.changes:
            if plan.record != managed:
                record_managed(record, plan.record)
            new = native_writer.changed(
                current, snapshot.values, plan.write, plan.remove, password, es_version, path
            )
            if new is not None:
                native_writer.save(path, new, password, old if current is not None else None)
        if set(digests) != (plan.record if plan.changes else managed) or not record.exists():
            record_managed(record, set(digests))
    except UpdateError as err:
        raise Failed(str(err)) from None
    print(
        f"{path}: {len(plan.write)} setting(s) written, {len(plan.remove)} removed, "
        f"{len(snapshot.values)} managed, {len(snapshot.left_out)} left out"
    )
    return EXIT_OK


def _check_version(path: Path, es_version: str) -> None:
    """A missing keystore is created in the format of KEYSTORE_ES_VERSION: it must name one."""
    from espm.keystore.format import format_for_es_version

    if not es_version:
        raise Failed(f"there is no keystore at {path}: set KEYSTORE_ES_VERSION to create one", EXIT_USAGE)
    try:
        format_for_es_version(es_version)
    except ValueError as err:
        raise Failed(f"KEYSTORE_ES_VERSION={es_version!r}: {err}", EXIT_USAGE) from None
