"""The process tree from /proc: children, descendants and states (for tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os


def children(pid: int) -> list[int]:
    """The children of `pid` (every thread's), zombies included."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def proc_state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, Z, T ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
