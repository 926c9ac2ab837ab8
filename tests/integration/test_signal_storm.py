"""A signal storm never hides the end of the child, nor changes the manager's exit status."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile

from tests.conftest import PYTHON, base_env, children, fixture, proc_state

STORM = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGWINCH)
BURST = 10_000
ROUNDS = 20


def storm_round(pid1: bool, code: int, after_ms: int) -> tuple[int | None, str]:
    """One manager whose child exits with `code` inside a burst: (espm's status, its stderr).

    The child ends `after_ms` after the first signal reaches it.

    The status is None when espm had not exited 10 s after the burst (its child left a zombie).
    """
    argv = [PYTHON, "-m", "espm", "--", PYTHON, fixture("stormchild.py"), str(after_ms), str(code)]
    if pid1:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv, env=base_env(PM_HTTP_PORT="0", PM_LOG_LEVEL="warning"), stdout=subprocess.PIPE, stderr=err
        )
        assert proc.stdout is not None
        status: int | None = None
        try:
            assert proc.stdout.readline() == b"ready\n"
            manager = children(proc.pid)[0] if pid1 else proc.pid
            child = children(manager)[0]
            # The burst goes on past the child's end: BURST signals in all, and never fewer
            # than BURST // 4 once the child has ended.
            sent, ended_at = 0, None
            while sent < max(BURST, (ended_at or BURST) + BURST // 4):
                try:
                    os.kill(manager, STORM[sent % len(STORM)])
                except ProcessLookupError:
                    break  # espm has exited already
                sent += 1
                if ended_at is None and sent % 64 == 0 and proc_state(child) in (None, "Z"):
                    ended_at = sent
            try:
                status = proc.wait(10)
            except subprocess.TimeoutExpired:
                assert proc_state(child) == "Z", "espm hangs, and its child is not even a zombie"
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        err.seek(0)
        text = err.read().decode(errors="replace")
    if status is not None and status < 0:
        status = 128 - status  # unshare re-raises the signal that ended espm
    return status, text


def test_the_child_ends_inside_a_storm_of_10000_signals(pid1: bool) -> None:
    rng = random.Random(8)
    outcomes = []
    for _ in range(ROUNDS):
        code, after_ms = rng.randrange(1, 120), rng.randrange(1, 8)
        status, stderr = storm_round(pid1, code, after_ms)
        outcomes.append((code, status, "Traceback" in stderr or "Exception ignored" in stderr))
    # espm noticed every end, and exited with the child's status: never a signal's (140),
    # and printed no traceback (a BlockingIOError from a full wakeup fd among them).
    assert outcomes == [(code, code, False) for code, _, _ in outcomes]
