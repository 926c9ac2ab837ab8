"""The record of the names the updater manages, beside the keystore (names only, never values)."""

from __future__ import annotations

import json
from pathlib import Path

from espm.keystore.writer import UpdateError
from espm.system.files import replace_atomically


def managed_path(keystore: Path) -> Path:
    return keystore.with_name(keystore.name + ".managed")


def read_managed(path: Path) -> tuple[set[str], str | None]:
    """The recorded names, and why they could not be read (then none are known)."""
    try:
        names = json.loads(path.read_bytes())
    except FileNotFoundError:
        return set(), None
    except (OSError, ValueError, RecursionError) as err:  # deep nesting: RecursionError
        return set(), f"cannot read {path} ({err}): removed secrets may stay in the keystore"
    if not isinstance(names, list):
        return set(), f"cannot read {path} (not a JSON list): removed secrets may stay in the keystore"
    return {n for n in names if isinstance(n, str)}, None


def record_managed(path: Path, names: set[str] | frozenset[str]) -> None:
    """Write the record atomically (durable before the keystore gets the names); UpdateError."""
    try:
        replace_atomically(path, (json.dumps(sorted(names)) + "\n").encode(), 0o644)
    except OSError as err:
        raise UpdateError(
            f"cannot record the managed setting names in {path}: {err.strerror or err}"
        ) from None
