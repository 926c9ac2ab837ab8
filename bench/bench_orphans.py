"""orphans: 2,000 orphans released at once, until PID 1 has reaped them all.

The child (`helper orphans 2000`) forks 2,000 grandchildren whose parents exit at once, so they
are re-parented to PID 1 (the manager, under `unshare --pid --fork --mount-proc`); they block
reading a pipe. On a line from stdin the child takes its CLOCK_MONOTONIC time and closes the
pipe: they all exit together. From here every orphan is polled with kill(pid, 0), which succeeds
on a zombie and fails with ESRCH once it has been reaped, until all are gone; that moment minus
the child's release time is the figure. /proc/<manager>/task/*/children (which lists zombies
too) then confirms that only the child is left. The child stays alive (it is the managed
process), then is ended by closing its stdin, and the manager must exit 0 with it.
"""

from __future__ import annotations

import contextlib
import os
import time

from harness import BenchError, Context, Result, Row, Running, children, espm_env, median, proc_state

NAME = "orphans"
ORPHANS = 2000
REPEATS = 5
MANAGERS = ("espm", "tini")
RATIO_LIMIT = 1.3
POLL = 0.00025  # seconds between two looks
TIMEOUT = 20.0


def _one(name: str, helper: str, env: dict[str, str]) -> tuple[float | None, int, int | None]:
    """(milliseconds until all reaped or None, orphans left, the manager's exit status)."""
    r = Running(name, [helper, "orphans", str(ORPHANS)], pid1=True, env=env)
    try:
        r.ready(60)
        pid1 = r.manager
        child = r.child()
        adopted = len(children(pid1)) - 1
        if adopted != ORPHANS:
            raise BenchError(f"{name}: {adopted} orphans re-parented to PID 1, expected {ORPHANS}")
        orphans = [k for k in children(pid1) if k != child]
        assert r.proc.stdin is not None
        os.write(r.proc.stdin.fileno(), b"go\n")
        deadline = time.monotonic() + TIMEOUT
        done_ns: int | None = None
        # kill(pid, 0) succeeds on a zombie and fails with ESRCH once it is reaped: a look
        # costs a microsecond, where reading a 2,000-entry children file costs ~0.5 ms of a
        # CPU that the orphans and the manager need (this machine has two).
        while orphans:
            try:
                os.kill(orphans[-1], 0)
            except ProcessLookupError:
                orphans.pop()
                continue
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        else:
            done_ns = time.monotonic_ns()
        left = sum(1 for k in children(pid1) if k != child)
        released = r.lines.stamp(5)
        # The child waited for its own children; any zombie left in the namespace would be
        # a child of PID 1, so none is left when PID 1 has only the child.
        zombies = sum(1 for k in children(pid1) if proc_state(k) == "Z")
        left = max(left, zombies)
        r.proc.stdin.close()
        with contextlib.suppress(Exception):
            r.proc.wait(10)
        code = r.proc.returncode
        ms = None if done_ns is None else (done_ns - released) / 1e6
        return ms, left, code
    finally:
        r.kill()


def run(ctx: Context) -> Result:
    result = Result(NAME)
    repeats = ctx.runs.get(NAME, REPEATS)
    helper = ctx.helper.path
    env = espm_env()
    times: dict[str, list[float]] = {m: [] for m in MANAGERS}
    left: dict[str, int] = dict.fromkeys(MANAGERS, 0)
    codes: dict[str, list[int | None]] = {m: [] for m in MANAGERS}
    for _ in range(repeats):
        for name in MANAGERS:  # interleaved, so that the machine's load weighs alike
            ms, n_left, code = _one(name, helper, env)
            if ms is not None:
                times[name].append(ms)
            left[name] = max(left[name], n_left)
            codes[name].append(code)
    med = {m: median(v) for m, v in times.items()}
    ratio = med["espm"] / med["tini"]
    result.details = {
        "orphans": ORPHANS,
        "repeats": repeats,
        "times_ms": times,
        "left": left,
        "exit_codes": codes,
        "ratio_median": ratio,
    }
    result.rows = [
        Row(
            "all reaped, median",
            "ms",
            dict(med),
            f"<= {RATIO_LIMIT:g}x tini ({ratio:.2f}x)",
            ratio <= RATIO_LIMIT,
        ),
        Row("all reaped, max", "ms", {m: max(v) if v else None for m, v in times.items()}),
        Row("orphans left", "", dict(left), "0", left["espm"] == 0),
    ]
    if any(c != 0 for c in codes["espm"]):
        result.notes.append(f"espm exit statuses {codes['espm']} (expected the child's 0)")
    return result
