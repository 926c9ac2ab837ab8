"""startup: from the exec of the manager until the managed child runs.

t0 is CLOCK_MONOTONIC taken just before posix_spawn(2) of the manager; the child
(`helper stamp`) writes its CLOCK_MONOTONIC first thing in main(). The managers run as ordinary
processes (not PID 1: a pid namespace would only add unshare's own cost, the same to all),
tini with -s to reap as a subreaper. Runs alternate between the managers. "python" is the floor of
any Python manager: the same interpreter (same site-packages and .pth files) that only forks and
execs the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from harness import BenchError, Context, Lines, Result, Row, descendants, espm_env, manager_argv, median

NAME = "startup"
RUNS = 20
MANAGERS = ("espm", "tini", "dumb-init", "python")
LIMIT_MS = 80.0


def _one(name: str, helper: str, env: dict[str, str]) -> float:
    argv = manager_argv(name, [helper, "stamp"], pid1=False)
    read_end, write_end = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
            (os.POSIX_SPAWN_CLOSE, read_end),
        ]
        t0 = time.monotonic_ns()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
    finally:
        os.close(write_end)
        os.close(devnull)
    try:
        t1 = Lines(read_end).stamp(30)
        return (t1 - t0) / 1e6
    finally:
        # SIGTERM is forwarded; the child dies of it and the manager follows. (The python
        # floor dies of it alone: its child is killed below.)
        below = descendants(pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.002)
        else:
            below = [*descendants(pid), *below]
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for p in below:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        os.close(read_end)


def run(ctx: Context) -> Result:
    result = Result(NAME)
    runs = ctx.runs.get(NAME, RUNS)
    helper = ctx.helper.path
    env = espm_env()
    times: dict[str, list[float]] = {m: [] for m in MANAGERS}
    for name in MANAGERS:  # one untimed run each: page cache, .pyc files
        _one(name, helper, env)
    for _ in range(runs):
        for name in MANAGERS:
            times[name].append(_one(name, helper, env))
    if not times["espm"]:
        raise BenchError("no run of espm completed")
    med = {m: median(v) for m, v in times.items()}
    result.details = {"runs": runs, "times_ms": times}
    result.rows = [
        Row("child running, median", "ms", dict(med), f"espm <= {LIMIT_MS:g} ms", med["espm"] <= LIMIT_MS),
        Row("child running, max", "ms", {m: max(v) for m, v in times.items()}),
    ]
    return result
