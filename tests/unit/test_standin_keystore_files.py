"""The stand-ins on real keystore files: formats per version, order, passwords, and damaged files."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from espm.keystore import format as ksf
from espm.standins.keystore_tool import encode_keystore, hashmap_order, java_string_hash
from tests import keystore_reference as ref
from tests.standin_es import EsLauncher
from tests.standin_es import StandinEs as Es
from tests.unit import test_standins as standins
from tests.unit.test_standins import RELOAD, Run, Tool, _error

# The stand-in fixtures of test_standins, shared rather than copied.
launcher = standins.launcher


@pytest.fixture
def tool(tmp_path: Path) -> Tool:
    """The tool at its default version (test_standins runs a faster one): formats are tested here."""
    conf = tmp_path / "config"
    conf.mkdir()
    return Tool(conf)


DATA = Path(__file__).resolve().parent.parent / "data" / "keystores"
MANIFEST = json.loads((DATA / "manifest.json").read_text())


def real_file(part: str) -> Path:
    (item,) = [m for m in MANIFEST if part in m["file"]]
    return DATA / item["file"]


def test_hashmap_order_is_the_order_of_every_real_keystore() -> None:
    for item in MANIFEST:
        names = [entry["name"] for entry in item["entries"]]
        # Whatever order they were put in, a HashMap of these names iterates in the file's order.
        assert hashmap_order(sorted(names)) == names, item["file"]
        assert hashmap_order(names[::-1]) == names, item["file"]


def test_hashmap_order_grows_its_table_as_java_does() -> None:
    # Java's HashMap starts with 16 buckets and doubles when a put makes it more than 3/4 full:
    # 12 names iterate in 16-bucket order, 13 in 32-bucket order.
    def order(names: list[str], buckets: int) -> list[str]:
        def bucket(name: str) -> int:
            value = java_string_hash(name)
            return (value ^ (value >> 16)) & (buckets - 1)

        return sorted(names, key=lambda n: (bucket(n), names.index(n)))

    names = [f"xpack.setting.{i}" for i in range(13)]
    assert order(names, 16) != order(names, 32)  # names chosen so that the two differ
    assert hashmap_order(names) == order(names, 32)
    assert order(names[:12], 16) != order(names[:12], 32)
    assert hashmap_order(names[:12]) == order(names[:12], 16)
    # String.hashCode as Java defines it: s[0]*31^(n-1) + ... + s[n-1], modulo 2^32.
    for text in ("keystore.seed", "bootstrap.password", "é😀"):
        raw = text.encode("utf-16-be")
        units = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        expected = sum(unit * 31 ** (len(units) - 1 - i) for i, unit in enumerate(units)) % 2**32
        assert java_string_hash(text) == expected


@pytest.mark.parametrize(
    ("es", "fmt"), [("6.5.4", 3), ("6.8.23", 4), ("7.17.22", 4), ("8.13.4", 5), ("8.15.0", 6), ("9.1.0", 7)]
)
def test_the_tool_writes_the_format_of_the_version_it_imitates(tool: Tool, es: str, fmt: int) -> None:
    tool.extra_env["STANDIN_KEYSTORE_VERSION"] = es
    assert tool("create").code == 0
    assert tool("add", "-x", "a.string", stdin=b"text\n").code == 0
    assert tool("add-file", "-f", "a.file", str(tool.value("f", b"\x00bytes"))).code == 0
    got = ref.read(tool.keystore.read_bytes())  # the independent reader, not espm's
    assert got.version == fmt and not got.has_password
    entries = {name: (kind, value) for name, kind, value in got.entries}
    assert [name for name, _, _ in got.entries] == hashmap_order(sorted(entries))
    assert entries["a.string"][1] == b"text" and entries["a.file"][1] == b"\x00bytes"
    if fmt == 3:
        kinds = {name: kind for name, (kind, _) in entries.items()}
        assert kinds == {"a.string": "STRING", "a.file": "FILE", "keystore.seed": "STRING"}


@pytest.mark.parametrize("part", ["6.3.0-v3", "7.17.21-v4", "8.12.1-v5", "9.0.1-v7", "unknown-v3"])
def test_the_tool_lists_a_real_keystore(tool: Tool, part: str) -> None:
    tool.extra_env["STANDIN_KEYSTORE_VERSION"] = "9.1.0"
    shutil.copyfile(real_file(part), tool.keystore)
    (item,) = [m for m in MANIFEST if part in m["file"]]
    assert tool("list") == Run(0, "".join(f"{n}\n" for n in sorted(e["name"] for e in item["entries"])), "")


def test_saving_upgrades_an_older_format_and_keeps_every_entry(tool: Tool) -> None:
    shutil.copyfile(real_file("8.12.1-v5"), tool.keystore)
    before = ksf.decode(tool.keystore.read_bytes())
    assert tool("add", "-x", "new.one", stdin=b"1\n").code == 0
    after = ref.read(tool.keystore.read_bytes())
    assert after.version == 6
    assert {n: v for n, _, v in after.entries} == {**before.entries, "new.one": b"1"}


def test_a_newer_format_is_refused_as_the_real_tool_does(tool: Tool) -> None:
    shutil.copyfile(real_file("9.0.1-v7"), tool.keystore)
    before = tool.keystore.read_bytes()
    run = tool("add", "-fx", "a", stdin=b"1\n", STANDIN_KEYSTORE_VERSION="8.17.0")
    assert run.code == 70
    assert "java.lang.IllegalStateException: The Elasticsearch keystore" in run.stderr
    assert "format is too new" in run.stderr
    run = tool("list", STANDIN_KEYSTORE_VERSION="7.17.22")
    assert run.code == 1 and 'Exception in thread "main" java.lang.IllegalStateException' in run.stderr
    assert tool.keystore.read_bytes() == before


def test_format_2_is_refused_as_too_old(tool: Tool) -> None:
    shutil.copyfile(real_file("6.2.4-v2"), tool.keystore)
    run = tool("list")
    assert run.code == 70 and "format is too old" in run.stderr


def test_a_password_protected_keystore_takes_its_password_from_stdins_first_line(tool: Tool) -> None:
    run = tool("create", "-p", stdin=b"pw-1\npw-1\n")
    assert run.code == 0
    got = ref.read(tool.keystore.read_bytes(), "pw-1")
    assert got.has_password and got.version == 6
    assert tool("has-passwd") == Run(0, "Keystore is password-protected\n", "")
    assert tool("add", "-x", "a", "b", stdin=b"pw-1\nvalue-a\nvalue-b\n").code == 0
    run = tool("list", stdin=b"pw-1\n")
    assert run.code == 0 and run.stdout == "a\nb\nkeystore.seed\n"
    assert "Enter password for the elasticsearch keystore" in run.stderr
    assert {
        n: v for n, _, v in ref.read(tool.keystore.read_bytes(), "pw-1").entries if n != "keystore.seed"
    } == {
        "a": b"value-a",
        "b": b"value-b",
    }
    before = tool.keystore.read_bytes()
    run = tool("remove", "a", stdin=b"wrong\n")
    assert run.code == 65 and run.stderr.endswith(_error("Provided keystore password was incorrect", 65))
    assert tool("list", stdin=None).code == 70  # no stdin: no password, a failure, never a hang
    assert tool.keystore.read_bytes() == before


def test_create_p_mismatch_and_versions_before_7_7(tool: Tool) -> None:
    run = tool("create", "-p", stdin=b"a\nb\n")
    assert run.code == 65 and run.stderr.endswith(_error("Passwords are not equal, exiting.", 65))
    assert "Enter new password for the elasticsearch keystore (empty for no password): " in run.stderr
    assert not tool.keystore.exists()
    run = tool("create", "-p", stdin=b"a\na\n", STANDIN_KEYSTORE_VERSION="7.6.2")
    assert run.code == 64 and run.stderr.endswith("ERROR: p is not a recognized option\n")
    assert tool("create", "-p", stdin=b"\n\n").code == 0  # an empty password: no password
    assert not ref.read(tool.keystore.read_bytes()).has_password


def test_a_damaged_keystore_is_a_data_error_and_stays_as_it_is(tool: Tool) -> None:
    good = encode_keystore({"keystore.seed": b"s" * 20, "a": b"1"})
    cases = {
        "tampered ciphertext": (
            ref.fix_crc(good[:-20] + bytes([good[-20] ^ 1]) + good[-19:]),
            "password was incorrect",
        ),
        "bad CRC": (good[:-1] + bytes([good[-1] ^ 1]), "corrupted or tampered"),
        "truncated": (good[:100], "corrupted or tampered"),
        "trailing bytes": (good + b"\x00", "corrupted or tampered"),
    }
    for label, (data, reason) in cases.items():
        tool.keystore.write_bytes(data)
        run = tool("add", "-fx", "b", stdin=b"2\n")
        assert run.code == 65 and reason in run.stderr, label
        assert tool.keystore.read_bytes() == data, label


# --- The stand-in node reads the real format on reload ----------------------------------------


@pytest.fixture
def es8p(launcher: EsLauncher) -> Es:
    return launcher(version="8.15.0")


def _reload(es: Es, password: str | None = None) -> dict[str, object]:
    body = None if password is None else json.dumps({"secure_settings_password": password}).encode()
    answer = es.request("POST", RELOAD, body)
    assert answer.status == 200 and answer.body["_nodes"]["failed"] == 0
    [node] = answer.body["nodes"].values()
    assert isinstance(node, dict)
    return node


def test_reload_decrypts_with_the_password_the_request_carries(es8p: Es) -> None:
    es8p.keystore.write_bytes(encode_keystore({"keystore.seed": b"s" * 20, "a": b"1"}, password="ks-pw"))
    assert _reload(es8p, "ks-pw") == {"name": "standin-node"}
    for wrong in (None, "", "other"):
        assert _reload(es8p, wrong)["reload_exception"] == {
            "type": "security_exception",
            "reason": "Provided keystore password was incorrect",
        }


def test_reload_reports_damaged_or_unreadable_files(es8p: Es) -> None:
    good = encode_keystore({"keystore.seed": b"s" * 20})
    tampered = ref.fix_crc(good[:-20] + bytes([good[-20] ^ 1]) + good[-19:])
    newer = encode_keystore({"keystore.seed": b"s" * 20}, version="9.0.0")
    cases = {
        "tampered": (tampered, "security_exception", "Provided keystore password was incorrect"),
        "bad CRC": (good[:-1] + bytes([good[-1] ^ 1]), "security_exception", "corrupted or tampered"),
        "trailing": (good + b"x", "security_exception", "corrupted or tampered"),
        "too new": (newer, "illegal_state_exception", "format is too new"),
        "too old": (real_file("6.2.4-v2").read_bytes(), "illegal_state_exception", "format is too old"),
        "format 8": (
            ref.fix_crc(good[:27] + struct.pack(">I", 8) + good[31:]),
            "illegal_state_exception",
            "too new",
        ),
    }
    for label, (data, kind, reason) in cases.items():
        es8p.keystore.write_bytes(data)
        exception = _reload(es8p)["reload_exception"]
        assert isinstance(exception, dict)
        assert exception["type"] == kind and reason in exception["reason"], label
    shutil.copyfile(real_file("8.17.1-v6"), es8p.keystore)
    assert "reload_exception" not in _reload(es8p)


def test_reload_on_9_3_names_the_settings_of_a_real_file(launcher: EsLauncher) -> None:
    es = launcher(version="9.3.0")
    shutil.copyfile(real_file("8.12.1-v5"), es.keystore)
    node = _reload(es)
    (item,) = [m for m in MANIFEST if "8.12.1-v5" in m["file"]]
    assert node["secure_setting_names"] == sorted(e["name"] for e in item["entries"])
    assert node["keystore_digest"] == item["file_sha256"]
