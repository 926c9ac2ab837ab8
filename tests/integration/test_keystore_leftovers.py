"""What crashes, full disks and the tool's own traps leave beside the keystore, and in /dev/shm.

Managers are SIGKILLed mid-update as PID 1 of fresh PID namespaces (every one of them pid 1, as in
containers), a full disk is a real small tmpfs mounted in the manager's own mount namespace, and
the stand-in tool is held mid-run by a shell line in `tool.env`.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import descendants, wait_for
from tests.keystore_fixtures import (
    CHILD,
    KEYSTORE,
    KeystoreSetup,
    shm_files_holding,
    start,
    status,
    wait_state,
    wait_status,
)

VALUE = "SV-crash-Jq5w-value"
HOLD = 'if [ -n "$HOLD_TOOL" ]; then : > "{marker}"; while [ ! -e "{release}" ]; do sleep 0.02; done; fi'


@pytest.fixture
def ks(tmp_path: Path) -> KeystoreSetup:
    return KeystoreSetup(tmp_path)


def parent_of(pid: int) -> int | None:
    """The parent of `pid`, or None when `pid` is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def namespace_pid(pid: int) -> int:
    """The pid `pid` has in its own (innermost) PID namespace."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError("no NSpid line")


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode() for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def hold_tool(ks: KeystoreSetup) -> tuple[Path, Path]:
    """Tool runs of managers whose environment has HOLD_TOOL wait for `release` (after `marker`)."""
    marker, release = ks.root / "tool-running", ks.root / "release"
    ks.set_tool_env(HOLD.format(marker=marker, release=release))
    return marker, release


def test_managers_killed_mid_update_leave_no_value_anywhere_and_the_next_pid_1_cleans_up(
    espm: Any, ks: KeystoreSetup
) -> None:
    marker, _ = hold_tool(ks)
    for round in range(3):
        marker.unlink(missing_ok=True)
        ks.secrets.write({"a": f"{VALUE}-{round}", "b": f"{VALUE}-b-{round}"})
        held = espm(CHILD, env=ks.env(HOLD_TOOL="1"), pid1=True)
        wait_for(marker.exists, timeout=10)
        assert namespace_pid(held.pid) == 1
        # Mid-update: a work folder beside the keystore, and the values nowhere but in memfds.
        assert ks.work_folders()
        # The wrapper's forks for `sleep` carry its command line until they exec: the tool is the
        # one whose parent is not the wrapper too.
        wrappers = {p for p in descendants(held.proc.pid) if str(ks.binary) in cmdline(p)}
        [tool] = [p for p in wrappers if parent_of(p) not in (*wrappers, None)]
        argv = cmdline(tool)[2:]  # sh WRAPPER add-file -f -- NAME PATH ...
        assert argv[:3] == ["add-file", "-f", "--"] and argv[3::2] == ["a", "b"], argv
        for path in argv[4::2]:
            assert path.startswith("/proc/self/fd/"), argv
            fd = path.rsplit("/", 1)[1]
            assert os.readlink(f"/proc/{tool}/fd/{fd}").startswith("/memfd:")
        assert not shm_files_holding(VALUE.encode())
        held.signal(signal.SIGKILL)  # PID 1 of its namespace: the tool dies with it
        held.wait()
        left = ks.work_folders()
        assert left, "the killed manager left its work folder"
        assert not shm_files_holding(VALUE.encode())
        # The next manager is pid 1 too: pids cannot tell it the folder is abandoned, the lock does.
        follower = start(espm, ks.env(), pid1=True)
        assert namespace_pid(follower.pid) == 1
        assert ks.work_folders() == []
        assert ks.settings()["a"] == f"{VALUE}-{round}".encode()
        follower.wait_log(f"removed {left[0]}")
        follower.close()
    assert not shm_files_holding(VALUE.encode())


def test_a_live_managers_work_folder_in_another_pid_namespace_is_never_touched(
    espm: Any, ks: KeystoreSetup
) -> None:
    marker, release = hold_tool(ks)
    ks.secrets.write({"a": "1"})
    first = espm(CHILD, env=ks.env(HOLD_TOOL="1"), pid1=True)
    wait_for(marker.exists, timeout=10)
    [busy] = ks.work_folders()
    # Another manager, PID 1 of another namespace, keeping a keystore in the same folder.
    second = start(espm, ks.env(KEYSTORE_PATH=str(ks.conf / "other.keystore")), pid1=True)
    assert namespace_pid(second.pid) == namespace_pid(first.pid) == 1
    assert busy in ks.work_folders()
    release.touch()
    first.wait_api()
    doc = wait_state(first, "running", "Keystore updated")
    assert doc["updates"] == 1 and ks.settings()["a"] == b"1"


def test_the_tool_gets_its_own_tmpdir_and_what_it_leaves_there_goes(espm: Any, ks: KeystoreSetup) -> None:
    seen = ks.root / "tmpdirs"
    # As 6.8 does: a folder in ES_TMPDIR (in /tmp without it), never removed.
    fallback = Path("/tmp") / f"elasticsearch-espm-test-{os.getpid()}"
    ks.set_tool_env(f'echo "$ES_TMPDIR" >> "{seen}"; mkdir -p "${{ES_TMPDIR:-/tmp}}/{fallback.name}"')
    try:
        ks.secrets.write({"a": "1", "b": "2"})
        manager = start(espm, ks.env())
        ks.secrets.write({"a": "1"})
        wait_status(manager, lambda s: s["updates"] == 2)
        tmpdirs = seen.read_text().split()
        assert len(tmpdirs) == 2  # the add-file run, the remove run
        for tmpdir in tmpdirs:
            assert tmpdir.startswith(str(ks.conf / ".espm-keystore-")), tmpdir
            assert not Path(tmpdir).exists()
        assert not fallback.exists()
        assert ks.work_folders() == []
    finally:
        shutil.rmtree(fallback, ignore_errors=True)


def test_a_stale_tool_tmp_file_is_removed_before_the_first_build(espm: Any, ks: KeystoreSetup) -> None:
    ks.prepare_foreign_keystore()
    stale = ks.conf / (KEYSTORE + ".tmp")
    stale.write_bytes(b"\x3f\xd7\x6c\x17\x16elasticsearch.keys")  # what a crashed save leaves
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env())
    assert not stale.exists()
    manager.wait_log("removed .*elasticsearch.keystore.tmp")
    # The tool (and the node's own start-up rewrite) can save again: it creates that file exclusively.
    ks.tool("add", "-x", "-f", "by.hand", stdin=b"v\n")
    ks.secrets.write({"a": "2"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert ks.settings()["a"] == b"2" and ks.settings()["by.hand"] == b"v"


def test_a_keystore_owned_by_another_user_keeps_its_owner_and_the_tool_never_refuses(
    espm: Any, ks: KeystoreSetup
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the keystore to another user")
    ks.prepare_foreign_keystore()
    os.chown(ks.keystore, 1000, 1001)
    ks.keystore.chmod(0o640)
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env())
    doc = status(manager)
    assert (doc["state"], doc["reason"]) == ("running", "Keystore updated"), doc
    st = ks.keystore.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o640)
    assert ks.settings()["a"] == b"1"


def test_the_tools_owner_check_gets_a_reason_that_says_what_to_do(espm: Any, ks: KeystoreSetup) -> None:
    ks.secrets.write({"a": "1"})
    # What 7.x and 8.x say when the tool runs as another user than the copy's owner (a wrapper
    # that switches users): the real line, with the real exit status.
    ks.set_tool_env(
        'echo "ERROR: will not overwrite keystore at [$ES_PATH_CONF/elasticsearch.keystore], because'
        ' this incurs changing the file owner, with exit code 78" >&2; exit 78'
    )
    manager = start(espm, ks.env())
    doc = wait_state(manager, "failed")
    assert "exited with status 78" in doc["reason"]
    assert "owned by another user" in doc["reason"] and "must not switch users" in doc["reason"]


# --- a full disk -------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def small_tmpfs_at(folder: Path, size: str) -> Callable[[], None]:
    """A preexec hook: the manager gets its own mount namespace with a `size` tmpfs at `folder`."""

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        options = f"size={size},mode=0755".encode()
        if libc.mount(b"tmpfs", os.fsencode(folder), b"tmpfs", 0, options) != 0:
            raise OSError(ctypes.get_errno(), "mount tmpfs")

    return setup


def fill(folder: Path) -> Path:
    """Write a file in `folder` until the disk is full."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_leaves_nothing_behind_and_updates_resume_when_space_returns(
    espm: Any, ks: KeystoreSetup
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env(), preexec=small_tmpfs_at(ks.conf, "256k"))
    # The manager's view of the config folder: its own tmpfs, through /proc.
    conf = Path(f"/proc/{manager.pid}/root") / ks.conf.relative_to("/")
    assert sorted(os.listdir(conf)) == [KEYSTORE, KEYSTORE + ".managed"]
    assert os.statvfs(conf).f_blocks * os.statvfs(conf).f_frsize <= 256 * 1024
    filler = fill(conf)
    expected = {KEYSTORE, KEYSTORE + ".managed", "filler"}
    # A new value (the copy of the keystore cannot be written), then a new name (nor the record).
    ks.secrets.write({"a": "2"})
    doc = wait_state(manager, "failed")
    assert "No space left on device" in doc["reason"], doc
    assert set(os.listdir(conf)) == expected
    ks.secrets.write({"a": "2", "b": "3"})
    doc = wait_status(manager, lambda s: s["state"] == "failed" and "managed" in s["reason"])
    assert "No space left on device" in doc["reason"], doc
    assert set(os.listdir(conf)) == expected  # no .managed.tmp, no work folder
    assert json.loads((conf / (KEYSTORE + ".managed")).read_text()) == ["a"]
    filler.unlink()
    doc = wait_state(manager, "running", "Keystore updated", timeout=10)  # the backoff's retry
    assert doc["settings"] == ["a", "b"]
    assert set(os.listdir(conf)) == {KEYSTORE, KEYSTORE + ".managed"}
