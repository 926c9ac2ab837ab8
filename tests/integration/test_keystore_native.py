"""The native writer end to end: real keystore files from real installs, written by a real espm,
read back by the independent reader (tests/keystore_reference.py), never by espm's format module."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import random
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from espm.keystore import format as ksf
from tests import keystore_reference as ref
from tests.conftest import wait_for
from tests.integration.test_keystore_leftovers import CLONE_NEWNS, MS_PRIVATE, MS_REC
from tests.keystore_fixtures import (
    CHILD,
    KEYSTORE,
    KeystoreSetup,
    reload_env,
    shm_files_holding,
    start,
    status,
    wait_state,
    wait_status,
)
from tests.standin_es import EsLauncher, Pki

REAL = Path(__file__).parent.parent / "data" / "keystores"
MANIFEST = {item["file"]: item for item in json.loads((REAL / "manifest.json").read_text())}
BY_FORMAT = {
    3: "6.3.0-v3-suser007-es.keystore",
    4: "7.17.21-v4-ironwire-kb-backend.keystore",
    5: "8.12.1-v5-adamrizqi011-elk-stack.keystore",
    6: "8.17.1-v6-kkkkknstntn-scraper.keystore",
    7: "9.0.1-v7-jakelandis-es-docker-with-kibana.keystore",
}
VALUE = "SV-native-Tq8m"
KS_PASSWORD = "ks-pw-Lr4v-keystore"


@pytest.fixture
def ks(tmp_path: Path) -> KeystoreSetup:
    return KeystoreSetup(tmp_path)


def entries(path: Path, password: str = "") -> list[tuple[str, bytes]]:
    """(name, value) in stored order, as the independent reader sees the file."""
    return [(name, value) for name, _, value in ref.read(path.read_bytes(), password).entries]


def beside(ks: KeystoreSetup) -> set[str]:
    return set(os.listdir(ks.conf))


@pytest.mark.parametrize("fmt", sorted(BY_FORMAT))
def test_the_native_writer_keeps_format_flag_order_and_every_foreign_entry(
    espm: Any, ks: KeystoreSetup, fmt: int
) -> None:
    shutil.copyfile(REAL / BY_FORMAT[fmt], ks.keystore)
    ks.keystore.chmod(0o660)
    foreign = entries(ks.keystore)
    assert "keystore.seed" in dict(foreign)
    ks.secrets.write({"s3.client.default.secret_key": f"{VALUE}-1", "binary.value": b"\x00\xff\n"})
    manager = start(espm, ks.env(KEYSTORE_WRITER="native"))
    doc = status(manager)
    assert (doc["state"], doc["reason"], doc["writer"]) == ("running", "Keystore updated", "native"), doc
    read = ref.read(ks.keystore.read_bytes())
    assert (read.version, read.has_password) == (fmt, False)
    assert entries(ks.keystore) == [
        *foreign,
        ("binary.value", b"\x00\xff\n"),
        ("s3.client.default.secret_key", f"{VALUE}-1".encode()),
    ]
    st = ks.keystore.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o660, os.getuid())
    # A change and a removal: the changed value keeps its place, foreign entries stay.
    ks.secrets.write({"s3.client.default.secret_key": f"{VALUE}-2"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert entries(ks.keystore) == [*foreign, ("s3.client.default.secret_key", f"{VALUE}-2".encode())]
    assert ref.read(ks.keystore.read_bytes()).version == fmt
    assert ks.runs() == []  # no tool run at all
    assert beside(ks) == {KEYSTORE, KEYSTORE + ".managed"}
    assert json.loads(ks.managed.read_text()) == ["s3.client.default.secret_key"]


def test_a_password_protected_keystore_is_written_with_its_password_and_reloaded_with_it(
    espm: Any, ks: KeystoreSetup, tmp_path: Path, pki: Pki, launch_es: EsLauncher
) -> None:
    protected = ksf.Keystore.new(7, has_password=True).with_entries({"bootstrap.password": b"boot"})
    ks.keystore.write_bytes(ksf.encode(protected, KS_PASSWORD))
    password_file = tmp_path / "keystore-password"
    password_file.write_text(KS_PASSWORD + "\n")
    ks.secrets.write({"a": f"{VALUE}-a"})
    es = launch_es(keystore=ks.keystore, version="9.0.1")
    env = reload_env(ks, es, pki, KEYSTORE_WRITER="native", KEYSTORE_PASSWORD_FILE=str(password_file))
    manager = start(espm, env)
    # The stand-in node decrypts the file with the password the reload request carries.
    doc = wait_state(manager, "running", "Secure settings reloaded")
    assert doc["reloads"] == 1 and es.stats()["reload"] == 1
    read = ref.read(ks.keystore.read_bytes(), KS_PASSWORD)
    assert read.has_password and read.version == 7
    assert dict(entries(ks.keystore, KS_PASSWORD))["a"] == f"{VALUE}-a".encode()
    assert KS_PASSWORD not in manager.stderr_text() and KS_PASSWORD not in json.dumps(status(manager))


def test_a_wrong_password_is_a_clear_failure_and_no_retry_storm(
    espm: Any, ks: KeystoreSetup, tmp_path: Path
) -> None:
    protected = ksf.Keystore.new(6, has_password=True)
    ks.keystore.write_bytes(ksf.encode(protected, KS_PASSWORD))
    before = ks.keystore.read_bytes()
    password_file = tmp_path / "keystore-password"
    password_file.write_text("not-the-password\n")
    ks.secrets.write({"a": "1"})
    env = ks.env(KEYSTORE_WRITER="native", KEYSTORE_PASSWORD_FILE=str(password_file), PM_EXP_VARS="true")
    manager = start(espm, env)
    doc = status(manager)
    assert doc["state"] == "failed" and "wrong keystore password" in doc["reason"], doc
    assert ks.keystore.read_bytes() == before
    time.sleep(2.6)  # past the first backoff of an ordinary failure (2 s, jittered to at most 2.4 s)
    _, doc, _ = manager.request("GET", "/debug/vars")
    assert doc["counters"]["keystore_update_failures"] == 1
    # Fixed: the next change of the Secret goes through at once, with the right password.
    password_file.write_text(KS_PASSWORD + "\n")
    ks.secrets.write({"a": "2"})
    wait_state(manager, "running", "Keystore updated")
    assert dict(entries(ks.keystore, KS_PASSWORD))["a"] == b"2"


def damaged(kind: str) -> bytes:
    good = (REAL / BY_FORMAT[5]).read_bytes()
    if kind == "not-a-keystore":
        return b"this is not a keystore\n"
    if kind == "too-old":
        return (REAL / "6.2.4-v2-abradleyuno-elasticsearch.keystore").read_bytes()
    if kind == "truncated":
        return good[:-40]
    if kind == "tampered":
        data = bytearray(good)
        data[200] ^= 1
        return ref.fix_crc(bytes(data))
    assert kind == "bad-crc"
    return good[:-1] + bytes([good[-1] ^ 1])


EXPECTED = {
    "not-a-keystore": "not an elasticsearch.keystore",
    "too-old": "too old",
    "truncated": "truncated",
    "tampered": "tampered",
    "bad-crc": "CRC",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_the_native_writer_never_overwrites_a_file_it_cannot_parse(
    espm: Any, ks: KeystoreSetup, kind: str
) -> None:
    data = damaged(kind)
    ks.keystore.write_bytes(data)
    ks.secrets.write({"a": "1"})
    # With a version given, the writer could make a new keystore: it must not, over this file.
    manager = start(espm, ks.env(KEYSTORE_WRITER="native", KEYSTORE_ES_VERSION="8.15.0"))
    doc = status(manager)
    assert doc["state"] == "failed" and doc["reason"].startswith("Failed to update keystore: "), doc
    assert EXPECTED[kind].lower() in doc["reason"].lower(), doc["reason"]
    assert ks.keystore.read_bytes() == data
    assert ks.runs() == [] and beside(ks) == {KEYSTORE, KEYSTORE + ".managed"}


def test_auto_creates_a_missing_keystore_with_the_tool_then_writes_natively(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env(KEYSTORE_WRITER="auto"))
    doc = status(manager)
    assert (doc["state"], doc["writer"]) == ("running", "tool"), doc
    manager.wait_log("keystore written by the tool: no keystore yet")
    runs = len(ks.runs())
    assert runs >= 1
    ks.secrets.write({"a": "2", "b": "3"})
    doc = wait_status(manager, lambda s: s["updates"] == 2)
    assert doc["writer"] == "native"
    manager.wait_log("keystore written natively")
    assert len(ks.runs()) == runs  # the file the tool made is a known format: no more runs
    assert {n: v for n, v in entries(ks.keystore) if n != "keystore.seed"} == {"a": b"2", "b": b"3"}


def test_auto_leaves_a_format_it_does_not_know_to_the_tool(espm: Any, ks: KeystoreSetup) -> None:
    old = (REAL / "6.2.4-v2-abradleyuno-elasticsearch.keystore").read_bytes()
    ks.keystore.write_bytes(old)
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env(KEYSTORE_WRITER="auto"))
    doc = status(manager)
    assert doc["writer"] == "tool" and ks.runs(), doc
    manager.wait_log("keystore written by the tool: a format the native writer does not know")


def test_native_creates_a_missing_keystore_in_the_format_of_the_version_given(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env(KEYSTORE_WRITER="native", KEYSTORE_ES_VERSION="8.12.1"))
    assert status(manager)["writer"] == "native"
    read = ref.read(ks.keystore.read_bytes())
    assert (read.version, read.has_password) == (5, False)
    got = dict(entries(ks.keystore))
    assert got["a"] == b"1"
    seed = got["keystore.seed"].decode("ascii")
    assert len(seed) == 20 and set(seed) <= set(ksf.SEED_ALPHABET)
    assert stat.S_IMODE(ks.keystore.stat().st_mode) == 0o660
    assert ks.runs() == []


def test_native_without_a_version_does_not_create_a_keystore_and_says_why(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env(KEYSTORE_WRITER="native", KEYSTORE_BINARY="/nonexistent/tool"))
    doc = status(manager)
    assert doc["state"] == "failed" and "KEYSTORE_ES_VERSION" in doc["reason"], doc
    assert not ks.keystore.exists()


# --- no value file, no work folder -----------------------------------------------------------

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_ISDIR = 0x40000000


class Creations:
    """Names created (or moved in) in some folders, with an inotify watch of our own."""

    def __init__(self, *folders: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        self.folders = {}
        for folder in folders:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_CREATE | IN_MOVED_TO)
            assert wd >= 0, folder
            self.folders[wd] = folder
        self.seen: list[tuple[Path, str, bool]] = []

    def read(self) -> list[tuple[Path, str, bool]]:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.seen
            offset = 0
            while offset + 16 <= len(data):
                wd = int.from_bytes(data[offset : offset + 4], "little", signed=True)
                mask = int.from_bytes(data[offset + 4 : offset + 8], "little")
                length = int.from_bytes(data[offset + 12 : offset + 16], "little")
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                self.seen.append((self.folders[wd], name, bool(mask & IN_ISDIR)))
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def private_shm() -> None:
    """preexec: the manager's own mount namespace, with an empty tmpfs on /dev/shm."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "unshare/mount")
    if libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", 0, b"size=16m") != 0:
        raise OSError(ctypes.get_errno(), "mount /dev/shm")


def test_with_the_native_writer_no_value_file_and_no_work_folder_is_ever_made(
    espm: Any, ks: KeystoreSetup
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a private /dev/shm")
    shutil.copyfile(REAL / BY_FORMAT[5], ks.keystore)
    ks.secrets.write({f"n{i}": f"{VALUE}-{i}" for i in range(20)})
    manager = start(espm, ks.env(KEYSTORE_WRITER="native"), preexec=private_shm)
    shm = Path(f"/proc/{manager.pid}/root/dev/shm")
    watch = Creations(ks.conf, shm)
    try:
        for round in range(3):
            ks.secrets.write({f"n{i}": f"{VALUE}-{round}-{i}" for i in range(20 + round)})
            wait_status(manager, lambda s, r=round: s["updates"] == r + 2)
        created = watch.read()
    finally:
        watch.close()
    assert os.listdir(shm) == [] and not [c for c in created if c[0] == shm], created
    assert not [c for c in created if c[2]], created  # no folder at all
    names = {name for _, name, _ in created}
    temporary = {n for n in names if n.startswith(f".{KEYSTORE}.espm-") and n.endswith(".tmp")}
    assert names - temporary == {".elasticsearch.keystore.managed.tmp", KEYSTORE, KEYSTORE + ".managed"}
    assert len(temporary) == 3  # one encrypted temporary keystore per update, renamed into place
    assert beside(ks) == {KEYSTORE, KEYSTORE + ".managed"}
    assert not shm_files_holding(VALUE.encode())
    wait_for(lambda: dict(entries(ks.keystore))["n0"] == f"{VALUE}-2-0".encode())


def test_an_entry_added_by_hand_between_two_native_updates_survives(espm: Any, ks: KeystoreSetup) -> None:
    shutil.copyfile(REAL / BY_FORMAT[5], ks.keystore)  # a format the stand-in tool (8.12) writes
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env(KEYSTORE_WRITER="native"))
    ks.secrets.write({"a": "2"})
    wait_status(manager, lambda s: s["updates"] == 2)
    # Behind the updater's back: the file is no longer the one it wrote last.
    ks.tool("add", "-x", "-f", "by.hand", stdin=b"hand-value\n")
    ks.secrets.write({"a": "3"})
    wait_status(manager, lambda s: s["updates"] == 3)
    got = dict(entries(ks.keystore))
    assert got["by.hand"] == b"hand-value" and got["a"] == b"3"


def test_every_native_write_draws_a_fresh_iv(espm: Any, ks: KeystoreSetup) -> None:
    shutil.copyfile(REAL / BY_FORMAT[7], ks.keystore)
    original = ref.read(ks.keystore.read_bytes())
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env(KEYSTORE_WRITER="native"))
    ivs = {original.iv}
    for value in ("2", "3"):
        ks.secrets.write({"a": value})
        wait_for(lambda v=value: dict(entries(ks.keystore)).get("a") == v.encode())
        read = ref.read(ks.keystore.read_bytes())
        # The salt (so the key) is the file's own; one IV twice under one key is what breaks GCM.
        assert read.salt == original.salt and read.iv not in ivs and len(read.iv) == 12
        ivs.add(read.iv)
    # The file is in place a moment before the update is counted (its record of names comes next).
    assert wait_status(manager, lambda s: s["updates"] >= 3)["updates"] == 3


def test_a_manager_killed_at_any_point_of_native_updates_leaves_the_old_file_or_the_new_one(
    espm: Any, ks: KeystoreSetup
) -> None:
    shutil.copyfile(REAL / BY_FORMAT[7], ks.keystore)
    foreign = entries(ks.keystore)
    versions: list[dict[str, bytes]] = []
    rng = random.Random(7)
    for round in range(6):
        values = {f"n{i}": f"{VALUE}-{round}-{i}".encode() for i in range(30)}
        versions.append(values)
        ks.secrets.write(values)
        manager = espm(CHILD, env=ks.env(KEYSTORE_WRITER="native"))
        manager.wait_log("watching .* for changes")
        for step in range(3):  # changes under way when the kill comes, at a random moment
            values = {f"n{i}": f"{VALUE}-{round}-{step}-{i}".encode() for i in range(30 - step)}
            versions.append(values)
            ks.secrets.write(values)
            time.sleep(rng.uniform(0, 0.03))
        manager.signal(signal.SIGKILL)
        manager.wait()
        got = entries(ks.keystore)  # complete, decryptable, and one of the versions written
        assert got[: len(foreign)] == foreign
        assert dict(got[len(foreign) :]) in versions
    # What the killed managers left (locked temporary files whose holders died) goes at the next start.
    manager = start(espm, ks.env(KEYSTORE_WRITER="native"))
    assert beside(ks) == {KEYSTORE, KEYSTORE + ".managed"}
    assert dict(entries(ks.keystore)[len(foreign) :]) == versions[-1]


def test_temporary_files_of_dead_writers_go_at_start_and_a_live_writers_stay(
    espm: Any, ks: KeystoreSetup
) -> None:
    shutil.copyfile(REAL / BY_FORMAT[5], ks.keystore)
    dead = ks.conf / f".{KEYSTORE}.espm-0dead0.tmp"  # its writer was killed: no lock on it
    dead.write_bytes(b"half an encrypted keystore")
    live = ks.conf / f".{KEYSTORE}.espm-11fe00.tmp"  # a writer in another PID namespace, mid-write
    live.write_bytes(b"being written")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ks.secrets.write({"a": "1"})
        manager = start(espm, ks.env(KEYSTORE_WRITER="native"))
        assert not dead.exists() and live.exists()
        manager.wait_log(f"removed {dead.name}")
    finally:
        os.close(fd)
