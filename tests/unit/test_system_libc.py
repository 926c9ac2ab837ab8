"""libc through ctypes: a failed call raises the OSError Python's own calls would."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from espm.system.libc import checked, errno_error, libc


def test_a_failed_call_raises_its_errno() -> None:
    with pytest.raises(OSError) as caught:
        checked(libc.close(-1))
    assert caught.value.errno == errno.EBADF
    assert caught.value.strerror == os.strerror(errno.EBADF)


def test_the_error_is_the_subclass_python_would_raise(tmp_path: os.PathLike[str]) -> None:
    fd = checked(libc.inotify_init1(os.O_CLOEXEC))
    try:
        with pytest.raises(FileNotFoundError):
            checked(libc.inotify_add_watch(fd, os.fsencode(f"{tmp_path}/missing"), 0x2))
    finally:
        os.close(fd)
    ctypes.set_errno(errno.EACCES)
    assert isinstance(errno_error(), PermissionError)


def test_a_successful_call_gives_its_result() -> None:
    assert checked(libc.getpid()) == os.getpid()
    read_end, write_end = os.pipe()
    os.close(write_end)
    assert checked(libc.close(read_end)) == 0  # 0 is a success, not a failure
