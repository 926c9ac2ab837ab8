"""What an update must do: the Secret's snapshot, what was applied and the managed names in,
the names to write and the names to remove out. Pure: no file, no process."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """One update's work; `record` is written down before the keystore changes."""

    write: tuple[str, ...]
    remove: tuple[str, ...]
    # Recorded before the keystore gets the names: a crash after the rename must not leave a
    # setting in the keystore that no record says is ours (it could never be removed).
    record: frozenset[str]

    @property
    def changes(self) -> bool:
        return bool(self.write or self.remove)


def make_plan(digests: Mapping[str, str], applied: Mapping[str, str] | None, managed: Set[str]) -> Plan:
    """The plan for a directory whose settings have `digests` (name -> digest of the value).

    `applied` holds the digests this updater put in the keystore it wrote last; None when the file
    is not that one (first run, or changed behind its back): then what it holds of ours is
    unknown, and every setting is written. `managed` is the recorded names: those that left the
    directory are removed, and no other entry is ever touched.
    """
    known = applied or {}
    write = tuple(name for name in sorted(digests) if known.get(name) != digests[name])
    remove = tuple(sorted(set(managed) - digests.keys()))
    return Plan(write, remove, frozenset(set(managed) | digests.keys()))
