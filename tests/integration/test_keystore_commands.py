"""`espm keystore list|sync|status` as a user runs them: real processes, real keystore files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from espm.keystore import crypto
from espm.keystore import format as ksf
from espm.standins.secret import SecretVolume
from tests import keystore_reference as ref
from tests.conftest import PYTHON, base_env
from tests.keystore_fixtures import CHILD, KeystoreSetup

REAL = Path(__file__).parent.parent / "data" / "keystores"
MANIFEST = {item["file"]: item for item in json.loads((REAL / "manifest.json").read_text())}
V5 = "8.12.1-v5-adamrizqi011-elk-stack.keystore"
V3 = "6.3.0-v3-suser007-es.keystore"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = base_env(**env)
    return subprocess.run([PYTHON, "-m", "espm", *args], env=full, capture_output=True, text=True, timeout=30)


def names(file: str) -> list[str]:
    return sorted(entry["name"] for entry in MANIFEST[file]["entries"])


# --- list --------------------------------------------------------------------------------------


def test_list_prints_the_sorted_names_of_every_real_keystore_and_never_a_value() -> None:
    for file, item in MANIFEST.items():
        if item["format"] < 3:
            continue
        done = run("keystore", "list", str(REAL / file))
        assert (done.returncode, done.stderr) == (0, ""), (file, done.stderr)
        assert done.stdout.splitlines() == names(file), file
        for entry in item["entries"]:
            if entry.get("value"):
                assert entry["value"] not in done.stdout, file


def test_list_json_and_the_default_path(tmp_path: Path) -> None:
    keystore = tmp_path / "elasticsearch.keystore"
    shutil.copyfile(REAL / V3, keystore)
    done = run("keystore", "list", "--json", KEYSTORE_PATH=str(keystore))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "path": str(keystore),
        "format": 3,
        "has_password": False,
        "settings": names(V3),
    }


def test_list_of_a_password_protected_keystore(tmp_path: Path) -> None:
    keystore = tmp_path / "elasticsearch.keystore"
    keystore.write_bytes(ksf.encode(ksf.Keystore.new(7, True).with_entries({"x.y": b"secret-x"}), "pw-7"))
    password = tmp_path / "pw"
    password.write_text("pw-7\n")
    done = run("keystore", "list", str(keystore), "--password-file", str(password))
    assert (done.returncode, done.stdout) == (0, "keystore.seed\nx.y\n"), done.stderr
    wrong = run("keystore", "list", str(keystore))
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert "wrong keystore password" in wrong.stderr and "password-protected" in wrong.stderr


def test_list_failures_exit_1_with_the_cause_and_usage_exits_2(tmp_path: Path) -> None:
    missing = run("keystore", "list", str(tmp_path / "missing"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr and "No such file" in missing.stderr
    old = run("keystore", "list", str(REAL / "6.2.4-v2-abradleyuno-elasticsearch.keystore"))
    assert old.returncode == 1 and "too old" in old.stderr
    assert run("keystore", "list", "--bogus").returncode == 2
    assert run("keystore", "list", "a", "b").returncode == 2
    assert run("keystore", "frobnicate").returncode == 2


# --- sync --------------------------------------------------------------------------------------


def sync(source: Path, keystore: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run("keystore", "sync", "--source", str(source), "--keystore", str(keystore), *args, **env)


def test_sync_creates_a_missing_keystore_in_the_format_of_the_version(tmp_path: Path) -> None:
    secrets = SecretVolume(tmp_path / "secrets")
    secrets.write({"a.b": "value-a", "c": b"\x00\x01"})
    keystore = tmp_path / "conf" / "elasticsearch.keystore"
    keystore.parent.mkdir()
    done = sync(secrets.path, keystore, KEYSTORE_ES_VERSION="8.17.1")
    assert done.returncode == 0, done.stderr
    read = ref.read(keystore.read_bytes())
    assert read.version == 6 and not read.has_password
    got = {name: value for name, _, value in read.entries}
    assert got["a.b"] == b"value-a" and got["c"] == b"\x00\x01" and len(got["keystore.seed"]) == 20
    assert json.loads(keystore.with_name(keystore.name + ".managed").read_text()) == ["a.b", "c"]
    assert oct(keystore.stat().st_mode & 0o777) == oct(0o660)
    assert sorted(os.listdir(keystore.parent)) == ["elasticsearch.keystore", "elasticsearch.keystore.managed"]


def test_sync_keeps_foreign_entries_removes_what_left_and_leaves_a_file_in_line_alone(tmp_path: Path) -> None:
    keystore = tmp_path / "elasticsearch.keystore"
    shutil.copyfile(REAL / V5, keystore)
    foreign = [(name, value) for name, _, value in ref.read(keystore.read_bytes()).entries]
    source = tmp_path / "secrets"
    source.mkdir()
    (source / "one").write_bytes(b"1")
    (source / "two").write_bytes(b"2")
    assert sync(source, keystore).returncode == 0
    (source / "two").unlink()
    done = sync(source, keystore)
    assert done.returncode == 0, done.stderr
    assert "0 setting(s) written, 1 removed" in done.stdout
    assert [(n, v) for n, _, v in ref.read(keystore.read_bytes()).entries] == [*foreign, ("one", b"1")]
    before = keystore.read_bytes()
    again = sync(source, keystore)
    assert again.returncode == 0 and "0 setting(s) written, 0 removed" in again.stdout
    assert keystore.read_bytes() == before  # in line: not rewritten


def test_sync_exit_codes(tmp_path: Path) -> None:
    source = tmp_path / "secrets"
    source.mkdir()
    (source / "a").write_bytes(b"1")
    (source / "-x").write_bytes(b"option-like")
    keystore = tmp_path / "elasticsearch.keystore"
    # No keystore and no version to create one in: configuration.
    done = sync(source, keystore)
    assert done.returncode == 2 and "KEYSTORE_ES_VERSION" in done.stderr and not keystore.exists()
    assert sync(source, keystore, KEYSTORE_ES_VERSION="6.2.4").returncode == 2
    # A left-out name is said on stderr; the rest is synced.
    done = sync(source, keystore, KEYSTORE_ES_VERSION="9.0.1")
    assert done.returncode == 0 and "'-x' left out" in done.stderr
    # A file it cannot read is left as it is.
    keystore.write_bytes(b"garbage")
    done = sync(source, keystore, KEYSTORE_ES_VERSION="9.0.1")
    assert done.returncode == 1 and "not an elasticsearch.keystore" in done.stderr
    assert keystore.read_bytes() == b"garbage"
    assert sync(tmp_path / "nope", keystore).returncode == 1
    assert run("keystore", "sync", "--bogus").returncode == 2


def _without_libcrypto(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`espm *args` in a mount namespace where every libcrypto shared object reads as empty."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a mount namespace")
    # The one this process loaded, and every one the dynamic linker could find by name.
    found = {*Path("/usr/lib").glob("libcrypto.so*"), *Path("/usr/lib").glob("*/libcrypto.so*")}
    found |= {*Path("/usr/local/lib").glob("libcrypto.so*"), Path(crypto.libcrypto_path())}
    hidden = sorted({str(f.resolve()) for f in found})
    mounts = " && ".join(f"mount --bind /dev/null {shlex.quote(f)}" for f in hidden)
    argv = ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh", PYTHON, "-m", "espm", *args]
    return subprocess.run(argv, env=base_env(**env), capture_output=True, text=True, timeout=30)


def test_no_usable_libcrypto_is_one_clear_line_and_nothing_written(tmp_path: Path) -> None:
    source = tmp_path / "secrets"
    source.mkdir()
    (source / "a").write_bytes(b"1")
    keystore = tmp_path / "elasticsearch.keystore"
    shutil.copyfile(REAL / V5, keystore)
    before = keystore.read_bytes()
    new = tmp_path / "new.keystore"  # not there yet: creating it must write nothing either
    runs = {
        "list": _without_libcrypto("keystore", "list", str(keystore)),
        "sync": _without_libcrypto("keystore", "sync", "--source", str(source), "--keystore", str(keystore)),
        "sync to a new file": _without_libcrypto(
            "keystore", "sync", "--source", str(source), "--keystore", str(new), KEYSTORE_ES_VERSION="9.0.1"
        ),
    }
    for what, done in runs.items():
        command = what.split()[0]
        assert done.returncode == 1, (what, done.stderr)
        cause = f"espm keystore {command}: AES-GCM needs OpenSSL's libcrypto"
        assert done.stderr.startswith(cause) and done.stderr.count("\n") == 1, (what, done.stderr)
    assert keystore.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["elasticsearch.keystore", "secrets"]  # no .managed either


# --- status and configuration ------------------------------------------------------------------


def test_keystore_and_keystore_status_show_the_updaters_status(espm: Any, tmp_path: Path) -> None:
    ks = KeystoreSetup(tmp_path)
    ks.secrets.write({"a": "1"})
    manager = espm(CHILD, env=ks.env())
    manager.wait_api()
    manager.wait_log("watching .* for changes")
    url = f"http://127.0.0.1:{manager.port}"
    for args in (["keystore"], ["keystore", "status"]):
        done = run(*args, "--url", url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("keystore  running  Keystore updated"), done.stdout
    done = run("keystore", "status", "--url", url, "--json")
    assert json.loads(done.stdout)["settings"] == ["a"]


def test_the_new_variables_are_listed_and_checked() -> None:
    text = run("--help").stdout
    assert "KEYSTORE_WRITER" in text and "KEYSTORE_PASSWORD_FILE" in text
    done = run("--", "true", PM_KEYSTORE_UPDATER="true", KEYSTORE_WRITER="jvm")
    assert done.returncode == 2
    assert done.stderr.strip() == "espm: KEYSTORE_WRITER='jvm': expected auto, native or tool"
