"""The update plan as a table: snapshot digests, what was applied, managed names -> write, remove."""

from __future__ import annotations

import pytest

from espm.keystore.plan import Plan, make_plan

D = {"a": "da", "b": "db", "c": "dc"}

CASES = {
    # name: (digests, applied, managed, write, remove)
    "first run: every setting is written": (D, None, set(), ("a", "b", "c"), ()),
    "nothing changed": (D, D, set(D), (), ()),
    "one value changed": (D, {**D, "b": "old"}, set(D), ("b",), ()),
    "a new setting": (D, {"a": "da", "b": "db"}, {"a", "b"}, ("c",), ()),
    "a setting left the directory": ({"a": "da"}, D, set(D), (), ("b", "c")),
    "the directory emptied": ({}, D, set(D), (), ("a", "b", "c")),
    "keystore changed behind our back: all again": (D, None, set(D), ("a", "b", "c"), ()),
    "unknown file, and a stale name": ({"a": "da"}, None, {"a", "z"}, ("a",), ("z",)),
    "entries not recorded as ours are never removed": ({"a": "da"}, {"a": "da"}, {"a"}, (), ()),
    "applied but no longer recorded: still written only when changed": (D, D, set(), (), ()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan(case: str) -> None:
    digests, applied, managed, write, remove = CASES[case]
    plan = make_plan(digests, applied, managed)
    assert (plan.write, plan.remove) == (write, remove)
    assert plan.changes == bool(write or remove)
    # Recorded before the keystore changes: every name it may hold of ours after the write.
    assert plan.record == frozenset(managed) | frozenset(digests)


def test_a_plan_never_removes_what_it_writes() -> None:
    plan = make_plan({"a": "1"}, None, {"a", "b"})
    assert plan == Plan(write=("a",), remove=("b",), record=frozenset({"a", "b"}))
