"""Starting the managed process the way tini does: own group, original signals, death with us.

`os.posix_spawn` could set the group, mask and default dispositions, but not the parent-death
signal, which needs `prctl(PR_SET_PDEATHSIG)` between fork and exec; so this forks itself. The
manager has a single thread, so the child may run Python code until it execs.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Mapping, Sequence

from espm.supervisor.signals import FORWARDED
from espm.system.libc import checked, libc

PR_SET_PDEATHSIG = 1
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


class SpawnError(Exception):
    """The command could not be executed; `exit_code` is the shell's 127 or 126."""

    def __init__(self, argv0: str, err: int, pid: int) -> None:
        self.errno = err
        self.pid = pid
        self.exit_code = EXIT_NOT_FOUND if err in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE
        super().__init__(f"cannot execute {argv0!r}: {os.strerror(err)}")


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    sigmask: frozenset[int],
    ignored: frozenset[int],
) -> int:
    """Fork and exec `argv`; return its pid (== its pgid) or raise SpawnError.

    Call with every signal blocked (a signal must not run the manager's handlers in the
    child), and register the pid with the reaper before unblocking them. On SpawnError the
    child exists and exits at once: it must still be reaped.
    """
    parent = os.getpid()
    # Exec failures come back through this pipe; a successful exec closes it (O_CLOEXEC).
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            _child(argv, env, sigmask, ignored, parent, write_end)
    finally:
        os.close(write_end)
    try:
        report = b""
        while chunk := os.read(read_end, 64):
            report += chunk
    finally:
        os.close(read_end)
    if report:
        raise SpawnError(argv[0], int(report), pid)
    return pid


def _child(
    argv: Sequence[str],
    env: Mapping[str, str],
    sigmask: frozenset[int],
    ignored: frozenset[int],
    parent: int,
    report_fd: int,
) -> None:
    code = errno.EINVAL
    try:
        os.setpgid(0, 0)
        checked(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
        if os.getppid() != parent:
            os._exit(EXIT_NOT_EXECUTABLE)  # the manager died before the prctl took effect
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as err:
        code = err.errno or errno.EINVAL
    except BaseException:
        pass
    try:
        os.write(report_fd, str(code).encode())
    finally:
        os._exit(EXIT_NOT_FOUND if code in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE)
