"""The keystore format module against the real keystore files, an independent reader, and bad input."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from espm.keystore import format as ksf
from tests import keystore_reference as ref

DATA = Path(__file__).resolve().parent.parent / "data" / "keystores"
MANIFEST: list[dict[str, Any]] = json.loads((DATA / "manifest.json").read_text())
READABLE = [m for m in MANIFEST if m["format"] >= 3]


def real(name_part: str) -> bytes:
    (item,) = [m for m in MANIFEST if name_part in m["file"]]
    return (DATA / item["file"]).read_bytes()


# A format 4 file (big-endian lengths) and a format 5 one (little-endian), both 10,000 rounds.
V4 = "7.x-v4-arno01"
V5 = "8.4.0-v5"


def test_the_manifest_covers_every_file_and_every_format() -> None:
    files = sorted(p.name for p in DATA.glob("*.keystore"))
    assert files == sorted(m["file"] for m in MANIFEST)
    assert {m["format"] for m in MANIFEST} == {2, 3, 4, 5, 6, 7}


@pytest.mark.parametrize("item", READABLE, ids=lambda m: m["file"])
def test_every_real_keystore_reads_as_its_manifest_says(item: dict[str, Any]) -> None:
    data = (DATA / item["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == item["file_sha256"]
    assert ksf.peek(data) == (item["format"], item["has_password"])
    keystore = ksf.decode(data, item["password"])
    assert keystore.version == item["format"]
    assert keystore.has_password is item["has_password"]
    assert len(keystore.salt or b"") == item["salt_length"] and len(keystore.iv or b"") == item["iv_length"]
    assert ksf.FORMATS[keystore.version].rounds == item["kdf_iterations"]
    assert ksf.FORMATS[keystore.version].key_bytes * 8 == item["key_bits"]
    assert ksf.FORMATS[keystore.version].little_endian == (item["byte_order"] == "little")
    got = [
        (name, len(value), hashlib.sha256(value).hexdigest(), keystore.legacy_types.get(name))
        for name, value in keystore.entries.items()
    ]
    want = [(e["name"], e["length"], e["sha256"], e.get("legacy_type")) for e in item["entries"]]
    assert got == want
    for entry in item["entries"]:
        if "value" in entry:
            assert keystore.entries[entry["name"]] == entry["value"].encode()


@pytest.mark.parametrize("item", READABLE, ids=lambda m: m["file"])
def test_reencrypting_a_real_keystore_with_its_salt_and_iv_rebuilds_it_byte_for_byte(
    item: dict[str, Any],
) -> None:
    data = (DATA / item["file"]).read_bytes()
    keystore = ksf.decode(data, item["password"])
    assert ksf.encode(keystore, item["password"], salt=keystore.salt, iv=keystore.iv) == data
    # And a rebuild from scratch (not from the decoded object) gives the same bytes.
    rebuilt = ksf.Keystore(
        keystore.version, keystore.has_password, dict(keystore.entries), dict(keystore.legacy_types)
    )
    assert ksf.encode(rebuilt, item["password"], salt=keystore.salt, iv=keystore.iv) == data


@pytest.mark.parametrize("item", READABLE, ids=lambda m: m["file"])
def test_the_independent_reader_agrees_on_every_real_keystore(item: dict[str, Any]) -> None:
    # The reader used below to check espm's own files must first be right about the real ones.
    data = (DATA / item["file"]).read_bytes()
    got = ref.read(data, item["password"])
    assert [(n, len(v), hashlib.sha256(v).hexdigest()) for n, _, v in got.entries] == [
        (e["name"], e["length"], e["sha256"]) for e in item["entries"]
    ]


def test_format_2_is_refused_as_too_old() -> None:
    data = real("6.2.4-v2")
    for call in (lambda: ksf.peek(data), lambda: ksf.decode(data)):
        with pytest.raises(ksf.FormatTooOldError, match="too old") as caught:
            call()
        assert caught.value.version == 2


def test_a_wrong_password_is_named_as_such() -> None:
    with pytest.raises(ksf.WrongPasswordError, match=r"wrong keystore password, or .* tampered") as caught:
        ksf.decode(real(V5), "not-the-password")
    assert "has no password, and one was given" in str(caught.value)


# --- Bad input, each built from a real file -------------------------------------------------


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@pytest.mark.parametrize("part", [V4, V5])
def test_a_changed_ciphertext_byte_with_a_recomputed_crc_is_a_bad_tag(part: str) -> None:
    data = real(part)
    for offset in (ksf.HEADER_LENGTH + 4 + 4 + 64 + 4 + 12 + 4, len(data) - 17):  # first and last sealed byte
        with pytest.raises(ksf.WrongPasswordError, match="tampered"):
            ksf.decode(ref.fix_crc(flip(data, offset)))


@pytest.mark.parametrize("part", [V4, V5])
def test_a_changed_salt_byte_is_a_bad_tag_too(part: str) -> None:
    # The salt is both the KDF salt and the GCM additional data.
    with pytest.raises(ksf.WrongPasswordError):
        ksf.decode(ref.fix_crc(flip(real(part), ksf.HEADER_LENGTH + 8)))


@pytest.mark.parametrize("part", [V4, V5])
def test_any_changed_byte_without_its_crc_is_a_checksum_mismatch(part: str) -> None:
    data = real(part)
    for offset in (
        ksf.HEADER_LENGTH - 1,
        ksf.HEADER_LENGTH + 1,
        100,
        len(data) - 17,
        len(data) - 1,
        len(data) - 8,
    ):
        with pytest.raises(ksf.ChecksumMismatchError, match="checksum mismatch"):
            ksf.decode(flip(data, offset))


@pytest.mark.parametrize("part", [V4, V5])
def test_a_truncated_file_is_named_truncated_wherever_it_is_cut(part: str) -> None:
    data = real(part)
    for length in (1, 4, 20, ksf.HEADER_LENGTH - 1, ksf.HEADER_LENGTH, ksf.HEADER_LENGTH + 3, 40, 100, 150):
        with pytest.raises(ksf.TruncatedKeystoreError, match="truncated"):
            ksf.decode(data[:length])
    for cut in range(1, 17):  # inside the footer
        with pytest.raises(ksf.TruncatedKeystoreError, match="truncated"):
            ksf.decode(data[:-cut])


def test_an_empty_file_or_another_file_is_not_a_keystore() -> None:
    for data in (b"", b"\x00" * 300, b"hello world, this is not a keystore at all" * 5, b"PK\x03\x04"):
        with pytest.raises(ksf.NotAKeystoreError, match=r"not an elasticsearch\.keystore"):
            ksf.decode(data)
        with pytest.raises(ksf.NotAKeystoreError):
            ksf.peek(data)


def test_a_wrong_magic_or_codec_name_is_not_a_keystore() -> None:
    data = real(V5)
    with pytest.raises(ksf.NotAKeystoreError, match="0x3FD76C16"):
        ksf.decode(ref.fix_crc(flip(data, 3)))
    with pytest.raises(ksf.NotAKeystoreError, match="codec"):
        ksf.decode(ref.fix_crc(data[:5] + b"elasticsearch.kEystore" + data[27:]))


@pytest.mark.parametrize(
    ("version", "error"),
    [
        (0, ksf.FormatTooOldError),
        (1, ksf.FormatTooOldError),
        (2, ksf.FormatTooOldError),
        (8, ksf.FormatTooNewError),
        (0x7FFFFFFF, ksf.FormatTooNewError),
    ],
)
def test_versions_outside_3_to_7_are_refused_by_name(
    version: int, error: type[ksf.FormatVersionError]
) -> None:
    data = real(V5)
    changed = ref.fix_crc(data[:27] + struct.pack(">I", version) + data[31:])
    for call in (ksf.peek, ksf.decode):
        with pytest.raises(error, match="too old" if error is ksf.FormatTooOldError else "newer") as caught:
            call(changed)
        assert caught.value.version == version


def test_bytes_after_the_footer_are_a_corruption() -> None:
    with pytest.raises(ksf.CorruptedKeystoreError, match="3 bytes after the codec footer"):
        ksf.decode(real(V5) + b"abc")


def test_a_password_flag_other_than_0_or_1_is_a_corruption() -> None:
    data = real(V4)
    changed = ref.fix_crc(data[:31] + b"\x02" + data[32:])
    with pytest.raises(ksf.CorruptedKeystoreError, match="password flag is 2"):
        ksf.decode(changed)


def test_a_data_length_that_disagrees_is_a_corruption() -> None:
    data = real(V5)
    length = struct.unpack_from("<i", data, 32)[0]
    changed = ref.fix_crc(data[:32] + struct.pack("<i", length + 1) + data[36:])
    with pytest.raises(ksf.CorruptedKeystoreError, match="data length"):
        ksf.decode(changed)


def _salt_iv(part: str) -> tuple[bytes, bytes]:
    keystore = ksf.decode(real(part))
    assert keystore.salt is not None and keystore.iv is not None
    return keystore.salt, keystore.iv


@pytest.mark.parametrize("version", [3, 4, 5])
def test_payload_damage_inside_a_valid_envelope_is_a_corruption(version: int) -> None:
    salt, iv = _salt_iv(V5)
    good = ref.payload(version, [("a", b"1"), ("b", b"22")])
    assert ksf.decode(ref.write(version, good, salt=salt, iv=iv)).entries == {"a": b"1", "b": b"22"}
    cases = {
        "trailing": (good + b"\x00", "1 bytes after the 2 entries"),
        "count too high": (ref.payload(version, [("a", b"1")], count=2), "entry 1"),
        "count negative": (ref.payload(version, [], count=-1), "negative entry count"),
        "twice": (ref.payload(version, [("a", b"1"), ("a", b"2")]), r"\[a\] is stored twice"),
        "value cut": (good[:-1], r"the value of \[b\]"),
        "empty": (b"", "entry count"),
    }
    for label, (plaintext, message) in cases.items():
        with pytest.raises(ksf.CorruptedKeystoreError, match=message):
            ksf.decode(ref.write(version, plaintext, salt=salt, iv=iv))
        assert label


def test_a_format_3_entry_with_an_unknown_legacy_type_is_a_corruption() -> None:
    salt, iv = _salt_iv(V5)
    plaintext = (
        struct.pack(">i", 1)
        + struct.pack(">H", 1)
        + b"a"
        + struct.pack(">H", 4)
        + b"BLOB"
        + struct.pack(">i", 0)
    )
    with pytest.raises(ksf.CorruptedKeystoreError, match="type 'BLOB'"):
        ksf.decode(ref.write(3, plaintext, salt=salt, iv=iv))


def test_every_error_is_a_keystore_format_error() -> None:
    for cls in (
        ksf.NotAKeystoreError,
        ksf.FormatTooOldError,
        ksf.FormatTooNewError,
        ksf.WrongPasswordError,
        ksf.TruncatedKeystoreError,
        ksf.ChecksumMismatchError,
        ksf.CorruptedKeystoreError,
        ksf.InvalidEntryError,
    ):
        assert issubclass(cls, ksf.KeystoreFormatError)


# --- Writing --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7])
@pytest.mark.parametrize("password", ["", "pässwörd 🔑"])
def test_files_espm_writes_are_read_by_the_independent_reader(version: int, password: str) -> None:
    keystore = ksf.Keystore.new(version, has_password=bool(password)).with_entries(
        {"s3.client.default.secret_key": b"secret\x00\xff", "empty": b"", "big": bytes(range(256)) * 300}
    )
    data = ksf.encode(keystore, password)
    got = ref.read(data, password)
    assert got.version == version and got.has_password is bool(password)
    assert len(got.salt) == 64 and len(got.iv) == 12
    assert [(n, v) for n, _, v in got.entries] == list(keystore.entries.items())
    assert [n for n, _, _ in got.entries] == ["keystore.seed", "s3.client.default.secret_key", "empty", "big"]
    assert [k for _, k, _ in got.entries] == (["STRING"] * 4 if version == 3 else [None] * 4)


def test_each_write_draws_a_fresh_salt_and_iv() -> None:
    keystore = ksf.Keystore.new(5)
    first, second = ref.read(ksf.encode(keystore)), ref.read(ksf.encode(keystore))
    assert first.salt != second.salt and first.iv != second.iv


def test_the_password_flag_and_the_password_must_agree() -> None:
    with pytest.raises(ValueError, match="needs a password"):
        ksf.encode(ksf.Keystore.new(7, has_password=True), "")
    with pytest.raises(ValueError, match="no password"):
        ksf.encode(ksf.Keystore.new(4), "x")


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("é", b"\xc3\xa9"),
        ("a\x00b", b"a\xc0\x80b"),
        ("😀", b"\xed\xa0\xbd\xed\xb8\x80"),
        ("ascii.name", b"ascii.name"),
    ],
)
def test_foreign_names_are_java_modified_utf8_both_ways(name: str, encoded: bytes) -> None:
    # Such names cannot come through the tool, but a file may hold them: they must survive a rewrite.
    keystore = ksf.Keystore(4, False, {name: b"v"})
    data = ksf.encode(keystore)
    assert (
        ref.read(data).payload == struct.pack(">iH", 1, len(encoded)) + encoded + struct.pack(">i", 1) + b"v"
    )
    assert list(ksf.decode(data).entries) == [name]


def test_with_entries_keeps_the_stored_order_replaces_in_place_and_appends() -> None:
    keystore = ksf.decode(real("8.12.1-v5"))
    names = list(keystore.entries)
    changed = keystore.with_entries(
        {"autoconfiguration.password_hash": b"new", "zzz.new": b"1", "aaa.new": b"2"},
        remove=["xpack.security.http.ssl.keystore.secure_password", "not.there"],
    )
    assert list(changed.entries) == [
        n for n in names if n != "xpack.security.http.ssl.keystore.secure_password"
    ] + [
        "zzz.new",
        "aaa.new",
    ]
    assert changed.entries["autoconfiguration.password_hash"] == b"new"
    assert changed.entries["keystore.seed"] == keystore.entries["keystore.seed"]
    assert keystore.entries["autoconfiguration.password_hash"] != b"new"  # the original is untouched
    assert ksf.decode(ksf.encode(changed)).entries == changed.entries
    assert changed.salt == keystore.salt and changed.iv is None  # an IV is never carried to new contents


def test_with_entries_in_format_3_keeps_legacy_types_and_types_new_names() -> None:
    keystore = ksf.decode(real("unknown-v3"))
    changed = keystore.with_entries({"file_setting": b"other", "new.s": b"x"}).with_entries(
        {"new.f": b"y"}, legacy_type="FILE"
    )
    assert dict(changed.legacy_types) == {
        "file_setting": "FILE",
        "string_setting": "STRING",
        "keystore.seed": "STRING",
        "new.s": "STRING",
        "new.f": "FILE",
    }
    assert [k for _, k, _ in ref.read(ksf.encode(changed)).entries] == [
        "FILE",
        "STRING",
        "STRING",
        "STRING",
        "FILE",
    ]


def test_with_entries_refuses_bad_new_names_and_contradictions_but_keeps_foreign_names() -> None:
    keystore = ksf.Keystore(5, False, {"foreign name!": b"x"})
    for bad in ("", "a b", "naïve", "-x", "a/b"):
        with pytest.raises(ksf.InvalidEntryError):
            keystore.with_entries({bad: b"v"})
    with pytest.raises(
        ksf.InvalidEntryError,
        match=r"does not match the allowed setting name pattern \[\[A-Za-z0-9_\\-.\]\+\]",
    ):
        keystore.with_entries({"a b": b"v"})
    with pytest.raises(ValueError, match="both set and removed"):
        keystore.with_entries({"a": b"1"}, remove=["a"])
    assert keystore.with_entries({"foreign name!": b"y"}).entries == {"foreign name!": b"y"}


def test_a_keystore_is_a_value() -> None:
    source = {"a": b"1"}
    keystore = ksf.Keystore(5, False, source)
    source["b"] = b"2"
    assert dict(keystore.entries) == {"a": b"1"}
    with pytest.raises(TypeError):
        keystore.entries["c"] = b"3"  # type: ignore[index]


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7])
def test_a_new_keystore_holds_only_a_fresh_seed(version: int) -> None:
    keystore = ksf.Keystore.new(version)
    assert list(keystore.entries) == ["keystore.seed"]
    seed = keystore.entries["keystore.seed"].decode("ascii")
    assert len(seed) == 20 and set(seed) <= set(ksf.SEED_ALPHABET)
    assert dict(keystore.legacy_types) == ({"keystore.seed": "STRING"} if version == 3 else {})
    assert ksf.Keystore.new(version).entries["keystore.seed"] != keystore.entries["keystore.seed"]


def test_seeds_use_the_whole_alphabet_and_only_it() -> None:
    drawn = "".join(ksf.new_seed() for _ in range(200))
    assert set(drawn) == set(ksf.SEED_ALPHABET)  # 4,000 draws from 76 characters miss none
    assert len(ksf.SEED_ALPHABET) == 76 and "~!@#$%^&*-_=+?" in ksf.SEED_ALPHABET


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("s3.client.default.access_key", True),
        ("a", True),
        ("A-b_c.9", True),
        ("x-", True),
        ("-leading", False),
        ("", False),
        ("has space", False),
        ("slash/name", False),
        ("naïve", False),
        ("new\nline", False),
        ("colon:name", False),
    ],
)
def test_setting_names_follow_the_tools_rule(name: str, valid: bool) -> None:
    assert ksf.valid_setting_name(name) is valid


@pytest.mark.parametrize(
    ("es", "version"),
    [
        ("6.3.0", 3),
        ("6.7.2", 3),
        ("6.8.0", 4),
        ("6.8.23", 4),
        ("7.0.0", 4),
        ("7.17.21", 4),
        ("8.0.0", 5),
        ("8.13.4", 5),
        ("8.14.0", 6),
        ("8.15.0", 6),
        ("8.17.1", 6),
        ("8.18.0", 7),
        ("8.19.3", 7),
        ("9.0.1", 7),
        ("9.3.0", 7),
        ("8.15.0-SNAPSHOT", 6),
        (" 8.15 ", 6),
    ],
)
def test_the_es_version_table(es: str, version: int) -> None:
    assert ksf.format_for_es_version(es) == version


@pytest.mark.parametrize("es", ["6.2.4", "5.6.0", "6", "garbage", "", "8.x", "v8.15.0", "8.15.0.1"])
def test_es_versions_before_6_3_or_not_versions_are_refused(es: str) -> None:
    with pytest.raises(ValueError, match=r"too old|older than 3|not an Elasticsearch version"):
        ksf.format_for_es_version(es)


def test_the_es_version_table_agrees_with_the_real_files() -> None:
    known = [m for m in READABLE if m["es_version"][0].isdigit() and "x" not in m["es_version"]]
    assert len(known) >= 6
    for item in known:
        es_version = item["es_version"].split()[0]  # "6.8.1 (probable)"
        assert ksf.format_for_es_version(es_version) == item["format"], item["file"]


# --- Property: any entry set, any version, with or without a password ------------------------

NAMES = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=40
).filter(ksf.valid_setting_name)
VALUES = st.one_of(
    st.binary(max_size=64),
    st.tuples(st.integers(1_000, 70_000), st.binary(min_size=1, max_size=8)).map(
        lambda t: (t[1] * t[0])[: t[0]]
    ),
)
ENTRIES = st.dictionaries(NAMES, VALUES, max_size=12)
PASSWORDS = st.one_of(
    st.just(""), st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
)


def _roundtrip(version: int, entries: dict[str, bytes], password: str) -> None:
    keystore = ksf.Keystore.new(version, has_password=bool(password)).with_entries(entries)
    data = ksf.encode(keystore, password)
    assert ksf.peek(data) == (version, bool(password))
    back = ksf.decode(data, password)
    assert list(back.entries.items()) == list(keystore.entries.items())
    assert list(back.entries) == ["keystore.seed", *(n for n in entries if n != "keystore.seed")]
    assert back.legacy_types == keystore.legacy_types


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from([3, 4, 5]), entries=ENTRIES, password=PASSWORDS)
def test_any_entry_set_round_trips_in_formats_3_to_5(
    version: int, entries: dict[str, bytes], password: str
) -> None:
    _roundtrip(version, entries, password)


# 210,000 rounds cost about 110 ms per derivation, two per example: a few examples each.
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from([6, 7]), entries=ENTRIES, password=PASSWORDS)
def test_any_entry_set_round_trips_in_formats_6_and_7(
    version: int, entries: dict[str, bytes], password: str
) -> None:
    _roundtrip(version, entries, password)


def test_rewriting_with_the_salt_read_derives_the_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    derived: list[int] = []
    real_pbkdf2 = ksf.crypto.pbkdf2_sha512

    def counting(password: bytes, salt: bytes, rounds: int, length: int) -> bytes:
        derived.append(rounds)
        return real_pbkdf2(password, salt, rounds, length)

    monkeypatch.setattr(ksf.crypto, "pbkdf2_sha512", counting)
    data = real("9.0.1-v7")
    keystore = ksf.decode(data)
    changed = keystore.with_entries({"new.setting": b"v"})
    again = ksf.encode(changed, salt=keystore.salt)
    assert derived == [210_000]  # the write reused the key the read derived
    got = ref.read(again)
    assert got.salt == keystore.salt and got.iv != keystore.iv  # a fresh IV under that key
    with pytest.raises(ksf.WrongPasswordError):
        ksf.decode(again, "other")  # same salt, another password: another key, never the cached one
    assert derived == [210_000, 210_000]
    ksf.encode(changed)  # a fresh salt is a new key
    assert len(derived) == 3


def test_keystores_with_the_same_contents_are_equal_whatever_their_salt() -> None:
    data = real(V5)
    first, second = ksf.decode(data), ksf.decode(ksf.encode(ksf.decode(data)))
    assert first.salt != second.salt and first == second
    assert first != first.with_entries({"x": b"1"})
