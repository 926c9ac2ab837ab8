"""The one owner of waitpid: SIGCHLD → waitpid loop → the exit status to whoever waits for it.

SIGCHLD stays blocked and is read from a signalfd, which is readable for as long as one is
pending: unlike a byte in Python's wakeup fd (which a storm of other signals overflows), it
cannot be lost. A `waitpid(-1, WNOHANG)` sweep also runs on every signal the manager gets and
once a second (as tini does), so no end can wait on a notification alone.

Nothing else in espm waits for a child. Whoever starts one (the managed process, a keystore tool
run) registers its pid here right after the fork, in the same synchronous step, so a status can
never be reaped before its owner is known, and never be stolen by another wait.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("espm.reaper")

PR_SET_CHILD_SUBREAPER = 36
SWEEP_INTERVAL = 1.0  # seconds between two safety-net sweeps

ExitCallback = Callable[[int], None]
"""Called with the raw wait status of a registered child."""


def set_child_subreaper() -> None:
    """Adopt orphaned descendants, as PID 1 does, so they can be reaped here."""
    from espm.system.libc import checked, libc

    checked(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))


class Reaper:
    """Reaps children on SIGCHLD; registered pids get their status, orphans are counted."""

    def __init__(self, reap_orphans: bool) -> None:
        self.reap_orphans = reap_orphans
        self.orphans_reaped = 0
        self._owners: dict[int, ExitCallback] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalfd = -1
        self._sweeper: asyncio.TimerHandle | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read SIGCHLD (held blocked) from a signalfd on the loop; sweep for earlier ends."""
        from espm.supervisor.signalfd import open_signalfd

        self._loop = loop
        self._signalfd = open_signalfd((signal.SIGCHLD,))
        loop.add_reader(self._signalfd, self._on_sigchld)
        self._sweep()

    def close(self) -> None:
        """Stop listening (before the loop closes)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._loop is not None and self._signalfd >= 0:
            self._loop.remove_reader(self._signalfd)
            os.close(self._signalfd)
            self._signalfd = -1
        self._loop = None

    def _on_sigchld(self) -> None:
        from espm.supervisor.signalfd import read_signals

        if self._signalfd >= 0:
            read_signals(self._signalfd)  # consumed first: an end after this raises a new one
        self.reap()

    def _sweep(self) -> None:
        self.reap()
        if self._loop is not None:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def register(self, pid: int, on_exit: ExitCallback) -> None:
        """Hand the exit status of child `pid` to `on_exit` when it ends."""
        self._owners[pid] = on_exit

    def unregister(self, pid: int) -> None:
        self._owners.pop(pid, None)

    def wait(self, pid: int) -> asyncio.Future[int]:
        """A future resolved with the raw wait status of child `pid`."""
        import asyncio

        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def resolve(status: int) -> None:
            if not future.done():
                future.set_result(status)

        self.register(pid, resolve)
        return future

    def reap(self) -> None:
        """Collect every child that has ended; never blocks."""
        if self.reap_orphans:
            self._reap_any()
        else:
            self._reap_registered()

    def _reap_any(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # ECHILD: no children at all
            except InterruptedError:
                continue  # PEP 475 retries, but a handler that raises may still surface it
            if pid == 0:
                return  # children remain, none has ended
            self._deliver(pid, status)

    def _reap_registered(self) -> None:
        # PM_REAPER=false: orphans are left alone, only our own children are collected.
        for pid in list(self._owners):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                self._deliver(pid, status)

    def _deliver(self, pid: int, status: int) -> None:
        owner = self._owners.pop(pid, None)
        if owner is None:
            self.orphans_reaped += 1
            log.debug("reaped orphan", extra={"orphan.pid": pid})
            return
        try:
            owner(status)
        except Exception:
            log.exception("exit callback failed", extra={"child.pid": pid})
