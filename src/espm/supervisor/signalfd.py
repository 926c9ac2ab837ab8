"""signalfd(2) through ctypes: signals read as records that say who sent them.

Used for the signals the manager can raise on itself (SIGPIPE on a write to a closed socket or
pipe, SIGXFSZ on a write past a file size limit). A handler cannot tell those from a signal an
operator sent, and forwarding them would hand Elasticsearch a SIGPIPE whenever an API client
hangs up. Kept blocked, they wait in the signalfd with the sender's pid: ours are dropped.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable

from espm.system.libc import checked, libc

SFD_NONBLOCK = os.O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC
_RECORD = 128  # sizeof(struct signalfd_siginfo)
_HEAD = struct.Struct("=IiiII")  # ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid


class _SigSet(ctypes.Structure):
    _fields_ = [("val", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))]


def open_signalfd(signals: Iterable[int]) -> int:
    """A non-blocking, close-on-exec fd that yields the given (blocked) signals."""
    mask = _SigSet()
    libc.sigemptyset(ctypes.byref(mask))
    for signum in signals:
        libc.sigaddset(ctypes.byref(mask), signum)
    return checked(libc.signalfd(-1, ctypes.byref(mask), SFD_NONBLOCK | SFD_CLOEXEC))


def read_signals(fd: int) -> list[tuple[int, int]]:
    """(signal number, sender pid) for every signal waiting in the signalfd."""
    out: list[tuple[int, int]] = []
    while True:
        try:
            data = os.read(fd, _RECORD * 16)
        except BlockingIOError:
            return out
        if not data:
            return out
        for offset in range(0, len(data) - _RECORD + 1, _RECORD):
            signo, _errno, _code, pid, _uid = _HEAD.unpack_from(data, offset)
            out.append((signo, pid))
