"""Which signals are forwarded, and the forwarding itself, done inside the signal handler.

Forwarding runs in a plain `signal.signal` handler, not through the event loop: CPython runs it
in the main thread at the next safe point, even while the loop waits in epoll or is busy with
HTTP requests, so a signal reaches the group without waiting for the loop's next turn. Only the
bookkeeping (counting, logging, deciding to exit) goes through the loop.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("espm.signals")

# SIGKILL and SIGSTOP cannot be caught; SIGCHLD is the reaper's own.
NOT_FORWARDED = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD})
FORWARDED: tuple[int, ...] = tuple(sorted(int(s) for s in signal.valid_signals() if s not in NOT_FORWARDED))
# Signals the manager may raise on itself by writing (see signalfd.py): held blocked and read
# with their sender, instead of being handled blind.
SELF_RAISED = frozenset({signal.SIGPIPE, signal.SIGXFSZ})
# Held blocked for good: SIGCHLD is read from the reaper's signalfd, the others from ours.
HELD = SELF_RAISED | {signal.SIGCHLD}
# With no process running, these end the manager (exit 0); the others are dropped.
TERMINATING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
ALL_SIGNALS = frozenset(signal.valid_signals())


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


class StartupSignals:
    """What the manager was started with: the signal mask and the ignored signals.

    Taken first thing, while every signal is blocked, so signals that arrive during start-up
    wait (pending) instead of being lost, and the child can be given back the original set-up.
    """

    def __init__(self) -> None:
        self.mask: frozenset[int] = frozenset(
            int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
        )
        # CPython ignores SIGPIPE and SIGXFSZ itself before our code runs; that is not the
        # container's set-up, so those two always start at their default in the child.
        self.ignored: frozenset[int] = frozenset(
            s
            for s in FORWARDED
            if s not in (signal.SIGPIPE, signal.SIGXFSZ) and signal.getsignal(s) == signal.SIG_IGN
        )

    def unblock(self) -> None:
        """Deliver what is pending and whatever comes next (to the handlers installed by now).

        HELD stay blocked: the forwarder and the reaper read them from signalfds.
        """
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask | HELD)

    @staticmethod
    def hold_all() -> None:
        """Block every signal for good: once the exit status is known, nothing may change it.

        CPython puts every handler back to its default while it finalizes; a signal that came
        then (a SIGUSR2 from a storm) would end the manager with 140 instead of the child's status.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)


SignalCallback = Callable[[int, bool], None]
"""Called on the loop with the signal number and whether it was forwarded."""


class SignalForwarder:
    """Forwards every catchable signal to the managed process group, when there is one."""

    def __init__(self) -> None:
        self.target_pgid: int | None = None
        self.forwarded = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: collections.deque[tuple[int, bool]] = collections.deque()
        self._callback: SignalCallback | None = None
        self._signalfd = -1

    def install(self) -> None:
        """Take over every forwardable signal (call with signals blocked)."""
        for signum in FORWARDED:
            if signum not in SELF_RAISED:
                signal.signal(signum, self._handle)
        # A SIGCHLD ignored by whoever started us would make the kernel reap our children
        # itself and lose their exit status.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def attach(self, loop: asyncio.AbstractEventLoop, callback: SignalCallback) -> None:
        """From now on, report each signal to `callback` on `loop`, those seen before first."""
        from espm.supervisor.signalfd import open_signalfd

        self._loop = loop
        self._callback = callback
        self._signalfd = open_signalfd(SELF_RAISED)
        loop.add_reader(self._signalfd, self._read_signalfd)
        loop.call_soon(self._read_signalfd)
        loop.call_soon(self._drain)

    def detach(self) -> None:
        """Stop reading the signalfd (before the loop closes)."""
        if self._loop is not None and self._signalfd >= 0:
            self._loop.remove_reader(self._signalfd)
            os.close(self._signalfd)
            self._signalfd = -1
        self._loop = None

    def _read_signalfd(self) -> None:
        from espm.supervisor.signalfd import read_signals

        if self._signalfd < 0:
            return  # detached already: a read scheduled before the loop's last turn
        me = os.getpid()
        for signum, sender in read_signals(self._signalfd):
            if sender == me:
                # Raised by our own write to a closed socket or pipe: the EPIPE is handled
                # where it happened, and Elasticsearch has nothing to do with it.
                continue
            self._handle(signum, None)

    def drain(self, callback: SignalCallback) -> None:
        """Report the signals seen so far, before there is a loop."""
        self._callback = callback
        self._drain()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        forwarded = False
        pgid = self.target_pgid
        if pgid is not None:
            try:
                os.killpg(pgid, signum)
                forwarded = True
                self.forwarded += 1
            except OSError:
                pass  # ESRCH: the group ended just now, and the reaper reports that
        # No logging here: the handler may interrupt a log call that holds the handler's lock.
        self._pending.append((signum, forwarded))
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        while self._pending and self._callback is not None:
            signum, forwarded = self._pending.popleft()
            self._callback(signum, forwarded)
