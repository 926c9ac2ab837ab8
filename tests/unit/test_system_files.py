"""Durable file replacement: the old file or the new one, the folder fsynced, nothing left over."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from espm.keystore.managed import managed_path, record_managed
from espm.supervisor.state import ProcessState, write_state_file
from espm.system.files import move_into_place, replace_atomically
from espm.system.libc import checked, libc

IN_OPEN = 0x20
IN_MOVED_TO = 0x80
IN_ISDIR = 0x40000000
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

# Run in a mount namespace of its own, where the folder is a 16 KiB tmpfs.
ON_A_FULL_TMPFS = """
import os, sys
from pathlib import Path
from espm.system.files import replace_atomically
target = Path(sys.argv[1]) / "state.json"
target.write_bytes(b"old\\n")
try:
    replace_atomically(target, b"x" * 65536)
except OSError as err:
    print(err.errno, sorted(os.listdir(target.parent)), target.read_bytes())
"""


@contextlib.contextmanager
def folder_events(folder: Path) -> Iterator[list[tuple[str, int]]]:
    """The (name, mask) of every open and rename-into in `folder`, read when the block ends.

    An empty name is the folder itself: opening it is what its fsync needs, and no fsync of a
    folder can happen without it (inotify sees no fsync as such).
    """
    fd = checked(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    events: list[tuple[str, int]] = []
    try:
        checked(libc.inotify_add_watch(fd, os.fsencode(folder), IN_OPEN | IN_MOVED_TO))
        yield events
        data = os.read(fd, 65536)
        offset = 0
        while offset < len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
            events.append((name, mask))
            offset += 16 + length
    finally:
        os.close(fd)


def folder_opened_after_rename(events: list[tuple[str, int]], name: str) -> bool:
    renamed = [i for i, (n, mask) in enumerate(events) if n == name and mask & IN_MOVED_TO]
    opened = [i for i, (n, mask) in enumerate(events) if n == "" and mask & IN_OPEN and mask & IN_ISDIR]
    return bool(renamed and opened and opened[-1] > renamed[0])


def test_a_new_file_holds_the_data_with_its_mode_and_nothing_else_is_left(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    old_umask = os.umask(0o022)
    try:
        replace_atomically(target, b'{"state": "stopped"}\n', 0o640)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b'{"state": "stopped"}\n'
    assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_replacement_is_a_rename_and_the_folder_is_fsynced_after_it(tmp_path: Path) -> None:
    target = tmp_path / "names"
    target.write_bytes(b"old\n")
    with target.open("rb") as reader, folder_events(tmp_path) as events:
        replace_atomically(target, b"new\n")
        # A reader that opened the old file still reads it whole: the new one is another inode.
        assert reader.read() == b"old\n"
    assert target.read_bytes() == b"new\n"
    assert folder_opened_after_rename(events, "names"), events
    assert os.listdir(tmp_path) == ["names"]


def test_moving_a_complete_file_into_place_fsyncs_the_folder_after_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "elasticsearch.keystore"
    target.write_bytes(b"old")
    new = tmp_path / ".elasticsearch.keystore.espm-1.tmp"
    new.write_bytes(b"new")
    with folder_events(tmp_path) as events:
        move_into_place(new, target)
    assert target.read_bytes() == b"new" and not new.exists()
    assert folder_opened_after_rename(events, "elasticsearch.keystore"), events


@pytest.mark.parametrize("record", ["managed names", "process state"])
def test_the_records_beside_the_keystore_and_the_state_are_durable(record: str, tmp_path: Path) -> None:
    # The managed-names record must be on disk before the keystore gets the names: its rename too.
    with folder_events(tmp_path) as events:
        if record == "managed names":
            path = managed_path(tmp_path / "elasticsearch.keystore")
            record_managed(path, {"s3.client.default.secret_key"})
        else:
            path = tmp_path / "state.json"
            write_state_file(path, ProcessState.STOPPED, "2026-12-01T18:41:29.123Z")
    assert folder_opened_after_rename(events, path.name), events
    assert os.listdir(tmp_path) == [path.name]


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A file size limit fails the write with EFBIG (Python ignores SIGXFSZ) as a full disk would.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as caught:
            replace_atomically(target, b"x" * 65536)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.errno == errno.EFBIG
    assert target.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_full_tmpfs_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    def own_small_tmpfs() -> None:
        checked(libc.unshare(CLONE_NEWNS))
        checked(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
        checked(libc.mount(b"tmpfs", os.fsencode(tmp_path), b"tmpfs", 0, b"size=16k,mode=0755"))

    done = subprocess.run(
        [sys.executable, "-c", ON_A_FULL_TMPFS, str(tmp_path)],
        preexec_fn=own_small_tmpfs,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == f"{errno.ENOSPC} ['state.json'] b'old\\n'", done.stderr


def test_a_failed_rename_leaves_neither_a_temporary_file_nor_a_changed_target(tmp_path: Path) -> None:
    target = tmp_path / "names"
    target.mkdir()  # a rename onto a folder fails, after the temporary file was written
    with pytest.raises(OSError):
        replace_atomically(target, b'["a"]\n')
    assert sorted(os.listdir(tmp_path)) == ["names"] and target.is_dir()


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not yours\n")
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / ".names.tmp").symlink_to(elsewhere)
    with pytest.raises(OSError) as caught:
        replace_atomically(folder / "names", b"[]\n")
    assert caught.value.errno == errno.ELOOP
    assert elsewhere.read_bytes() == b"not yours\n"
    assert sorted(os.listdir(folder)) == [".names.tmp"]  # no target, and the link as it was
    assert (folder / ".names.tmp").is_symlink()
