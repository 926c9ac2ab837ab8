"""The elasticsearch.keystore file format, versions 3 to 7: bytes and a password in, entries out, and back.

Pure: no I/O. The layout (KEYSTORE.md, "The file format"; KeyStoreWrapper.java):

    BE u32 0x3FD76C17, u8 22, "elasticsearch.keystore", BE u32 format version    codec header
    u8 has-password
    E i32 data length (= 12 + salt + IV + ciphertext lengths)
    E i32 salt length, salt | E i32 IV length, IV | E i32 length, AES-GCM ciphertext + 16-byte tag
    BE u32 0xC02893E8, BE u32 0, BE u64 CRC-32 of every byte before it           codec footer

E is big-endian up to format 4 and little-endian from 5 (Lucene 9). The plaintext is a Java
DataOutputStream (big-endian in every version): i32 count, then per entry writeUTF(name), in format
3 only writeUTF("STRING" | "FILE"), i32 length and the value's bytes.

Rules kept here:
- Entry order is part of the bytes: a decoded keystore keeps the stored order, and `with_entries`
  replaces values in place and appends new names, so a file re-encrypted with its own salt and IV
  is byte-identical.
- `encode` draws a fresh salt and IV unless it is given them: reusing an IV with the same key is
  what breaks GCM, so the salt and IV a keystore was read with are kept for reproduction only.
- Every refusal is a subclass of KeystoreFormatError that names its cause.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from espm.keystore import crypto

CODEC_MAGIC = 0x3FD76C17
FOOTER_MAGIC = 0xC02893E8  # ~CODEC_MAGIC, as Lucene writes it
CODEC_NAME = b"elasticsearch.keystore"
MIN_VERSION = 3
MAX_VERSION = 7
SALT_LENGTH = 64
IV_LENGTH = 12
SEED_SETTING = "keystore.seed"
SEED_LENGTH = 20
SEED_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~!@#$%^&*-_=+?"
LEGACY_TYPES = ("STRING", "FILE")

_HEADER = struct.Struct(">I B 22s I")  # magic, name length, name, version
HEADER_LENGTH = _HEADER.size + 1  # and the has-password byte
_FOOTER = struct.Struct(">I I Q")
FOOTER_LENGTH = _FOOTER.size
_I32_MAX = 2**31 - 1

# The tool's own pattern; a leading "-" is refused on top of it because the tool would take such
# a name for an option (see valid_setting_name).
_TOOL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_\-.]+")
TOOL_NAME_PATTERN_TEXT = r"[A-Za-z0-9_\-.]+"


@dataclass(frozen=True)
class FormatParams:
    """What a format version fixes: key derivation rounds, AES key size, byte order of the lengths."""

    rounds: int
    key_bytes: int
    little_endian: bool


FORMATS: Mapping[int, FormatParams] = MappingProxyType(
    {
        3: FormatParams(rounds=10_000, key_bytes=16, little_endian=False),
        4: FormatParams(rounds=10_000, key_bytes=16, little_endian=False),
        5: FormatParams(rounds=10_000, key_bytes=16, little_endian=True),
        6: FormatParams(rounds=210_000, key_bytes=16, little_endian=True),
        7: FormatParams(rounds=210_000, key_bytes=32, little_endian=True),
    }
)

# (first Elasticsearch version, format version it writes), oldest first (KEYSTORE.md).
_ES_FORMATS = (((6, 3), 3), ((6, 8), 4), ((8, 0), 5), ((8, 14), 6), ((8, 18), 7))
_ES_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:[-+][0-9A-Za-z.+-]*)?")


class KeystoreFormatError(Exception):
    """A keystore file that cannot be read or written; the subclass names the cause."""


class NotAKeystoreError(KeystoreFormatError):
    """The bytes do not start with the elasticsearch.keystore codec header."""


class FormatVersionError(KeystoreFormatError):
    """A keystore of a format version this module does not read (`version` holds it)."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class FormatTooOldError(FormatVersionError):
    """Format 2 and older (Elasticsearch 6.2 and older): PKCS#12 inside, not AES-GCM."""


class FormatTooNewError(FormatVersionError):
    """A format version newer than 7, written by an Elasticsearch this module does not know."""


class WrongPasswordError(KeystoreFormatError):
    """The AES-GCM tag does not match: a wrong password, or a file changed since it was written."""


class TruncatedKeystoreError(KeystoreFormatError):
    """The file ends before its own lengths say it should."""


class ChecksumMismatchError(KeystoreFormatError):
    """The CRC-32 in the codec footer is not that of the bytes before it."""


class CorruptedKeystoreError(KeystoreFormatError):
    """The file's structure or its decrypted payload is inconsistent (bad lengths, trailing bytes...)."""


class InvalidEntryError(KeystoreFormatError, ValueError):
    """An entry that cannot be stored: a name the tool refuses, or a name or value too long."""


def valid_setting_name(name: str) -> bool:
    """The tool's rule `[A-Za-z0-9_\\-.]+`, and no leading "-" (the tool would read it as an option)."""
    return _TOOL_NAME_PATTERN.fullmatch(name) is not None and not name.startswith("-")


def setting_name_error(name: str) -> str:
    """Why `name` is refused, in the tool's words where the tool refuses it too."""
    if _TOOL_NAME_PATTERN.fullmatch(name) is None:
        return (
            f"Setting name [{name}] does not match the allowed setting name pattern "
            f"[{TOOL_NAME_PATTERN_TEXT}]"
        )
    return f"Setting name [{name}] begins with '-': the tool would take it for an option"


def new_seed() -> str:
    """A fresh `keystore.seed`: 20 characters from the tool's alphabet, from the system CSPRNG."""
    import secrets  # here: secrets imports random and hmac, which a running manager never needs

    return "".join(secrets.choice(SEED_ALPHABET) for _ in range(SEED_LENGTH))


def format_for_es_version(es_version: str) -> int:
    """The format version an Elasticsearch version writes: "8.15.0" -> 6. ValueError before 6.3.

    Versions after 9.x get format 7, the newest known: Elasticsearch reads every older format and
    upgrades it at start-up, so an older format is the safe guess for a version not yet known.
    """
    match = _ES_VERSION.fullmatch(es_version.strip())
    if match is None:
        raise ValueError(f"not an Elasticsearch version: {es_version!r} (expected e.g. 8.15.0)")
    major_minor = (int(match.group(1)), int(match.group(2)))
    result = None
    for first, version in _ES_FORMATS:
        if major_minor >= first:
            result = version
    if result is None:
        raise ValueError(
            f"Elasticsearch {es_version} writes a keystore format older than 3 (PKCS#12), "
            "which espm does not write: 6.3 is the oldest version it supports"
        )
    return result


@dataclass(frozen=True)
class Keystore:
    """A decrypted keystore: its format, its password flag and its entries in stored order.

    `legacy_types` (format 3 only) holds each entry's "STRING"/"FILE" tag; an entry without one is
    written as "STRING". `salt` and `iv` are those the file was read with, kept so a test can
    rebuild it byte for byte; `encode` never reuses them unless they are passed to it, and they
    take no part in equality (two keystores with the same contents are equal).
    """

    version: int
    has_password: bool
    entries: Mapping[str, bytes]
    legacy_types: Mapping[str, str] = field(default_factory=dict)
    salt: bytes | None = field(default=None, repr=False, compare=False)
    iv: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.version not in FORMATS:
            raise ValueError(f"keystore format version {self.version} is not one of 3..7")
        # Read-only copies: a Keystore is a value, and the order of `entries` is its stored order.
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))
        unknown = set(self.legacy_types) - set(self.entries)
        if unknown:
            raise ValueError(f"legacy types given for names not in the keystore: {sorted(unknown)}")
        for name, kind in self.legacy_types.items():
            if kind not in LEGACY_TYPES:
                raise ValueError(f"legacy type of [{name}] is {kind!r}, not STRING or FILE")
        object.__setattr__(self, "legacy_types", MappingProxyType(dict(self.legacy_types)))

    @classmethod
    def new(cls, version: int, has_password: bool = False) -> Keystore:
        """An empty keystore as the tool's `create` makes it: only a fresh `keystore.seed`."""
        types = {SEED_SETTING: "STRING"} if version == 3 else {}
        return cls(version, has_password, {SEED_SETTING: new_seed().encode("ascii")}, types)

    def with_entries(
        self,
        set: Mapping[str, bytes] | None = None,  # the name the updater codes against
        remove: Iterable[str] = (),
        *,
        legacy_type: str = "STRING",
    ) -> Keystore:
        """A copy with `set` stored and `remove` gone, order kept.

        A name already present keeps its place (and, in format 3, its legacy type); a new one is
        appended in `set`'s order with `legacy_type`. Removing a name that is not there is not an
        error. New names must pass `valid_setting_name`; names already in the file are kept as
        they are, whatever wrote them. The copy keeps the salt read, not the IV.
        """
        to_set = dict(set or {})
        to_remove = frozenset(remove)
        both = to_remove & to_set.keys()
        if both:
            raise ValueError(f"names both set and removed: {sorted(both)}")
        if legacy_type not in LEGACY_TYPES:
            raise ValueError(f"legacy type {legacy_type!r} is not STRING or FILE")
        for name, value in to_set.items():
            if name not in self.entries and not valid_setting_name(name):
                raise InvalidEntryError(setting_name_error(name))
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(f"the value of [{name}] is {type(value).__name__}, not bytes")
        entries: dict[str, bytes] = {}
        for name, value in self.entries.items():
            if name not in to_remove:
                entries[name] = value
        for name, value in to_set.items():
            entries[name] = bytes(value)  # in place when present, appended when new
        types: dict[str, str] = {}
        if self.version == 3:
            types = {
                name: self.legacy_types.get(name, "STRING" if name in self.entries else legacy_type)
                for name in entries
            }
        # The salt stays (re-encrypting under it reuses the key decode derived); the IV does not:
        # it belongs to the old contents, and one IV under one key twice is what breaks GCM.
        return Keystore(self.version, self.has_password, entries, types, self.salt, None)


def peek(data: bytes) -> tuple[int, bool]:
    """(format version, has password) from the header alone: no CRC check, no key derivation.

    Raises NotAKeystoreError, TruncatedKeystoreError, FormatTooOldError or FormatTooNewError (the
    last two carry `.version`), and CorruptedKeystoreError for a password flag other than 0 or 1.
    """
    version = _check_header(data)
    return version, _password_flag(data)


def decode(data: bytes, password: str = "") -> Keystore:
    """Parse, check and decrypt a keystore file."""
    version = _check_header(data)
    has_password = _password_flag(data)
    salt, iv, sealed = _split_body(data, FORMATS[version])
    params = FORMATS[version]
    key = _derive_key(password, salt, params)
    try:
        payload = crypto.aes_gcm_decrypt(key, iv, sealed, salt)
    except crypto.AuthenticationError:
        hint = ""
        if not has_password and password:
            hint = " (this keystore has no password, and one was given)"
        elif has_password and not password:
            hint = " (this keystore is password-protected, and no password was given)"
        raise WrongPasswordError(
            "wrong keystore password, or the keystore file was tampered with (the AES-GCM tag "
            f"does not match){hint}"
        ) from None
    entries, types = _parse_payload(payload, version)
    return Keystore(version, has_password, entries, types, salt, iv)


def encode(
    keystore: Keystore, password: str = "", *, salt: bytes | None = None, iv: bytes | None = None
) -> bytes:
    """The file bytes of `keystore`, encrypted with `password` and a fresh salt and IV unless given.

    Passing only `salt=keystore.salt` (the IV is then fresh) skips the second key derivation of a
    read-change-write: the key is the one `decode` derived, and AES-GCM stays sound under one key
    as long as every IV is new. Never pass the IV a file was read with for different contents.
    """
    if keystore.has_password != bool(password):
        raise ValueError(
            "a password-protected keystore needs a password"
            if keystore.has_password
            else "this keystore has no password: encode it with password=''"
        )
    params = FORMATS[keystore.version]
    salt = os.urandom(SALT_LENGTH) if salt is None else bytes(salt)
    iv = os.urandom(IV_LENGTH) if iv is None else bytes(iv)
    if not salt or not iv:
        raise ValueError("the salt and the IV cannot be empty")
    payload = _build_payload(keystore)
    key = _derive_key(password, salt, params)
    sealed = crypto.aes_gcm_encrypt(key, iv, payload, salt)
    i32 = struct.Struct("<i" if params.little_endian else ">i")
    body = b"".join(
        (
            _HEADER.pack(CODEC_MAGIC, len(CODEC_NAME), CODEC_NAME, keystore.version),
            b"\x01" if keystore.has_password else b"\x00",
            i32.pack(12 + len(salt) + len(iv) + len(sealed)),
            i32.pack(len(salt)),
            salt,
            i32.pack(len(iv)),
            iv,
            i32.pack(len(sealed)),
            sealed,
            struct.pack(">II", FOOTER_MAGIC, 0),
        )
    )
    return body + struct.pack(">Q", zlib.crc32(body))


# The last key derived, by (password, salt, rounds, key size): PBKDF2 is the whole cost of formats 6
# and 7 (210,000 rounds), and a writer that re-encrypts with the salt it read (and a fresh IV) needs
# the same key again. One entry only: no pile of keys kept in memory.
_last_key: tuple[tuple[str, bytes, int, int], bytes] | None = None


def _derive_key(password: str, salt: bytes, params: FormatParams) -> bytes:
    global _last_key
    wanted = (password, bytes(salt), params.rounds, params.key_bytes)
    last = _last_key  # one read: another thread may replace it meanwhile, never half of it
    if last is not None and last[0] == wanted:
        return last[1]
    key = crypto.pbkdf2_sha512(password.encode("utf-8"), salt, params.rounds, params.key_bytes)
    _last_key = (wanted, key)
    return key


def _check_header(data: bytes) -> int:
    """The format version, after the codec magic and name are checked."""
    if len(data) < HEADER_LENGTH:
        expected = _HEADER.pack(CODEC_MAGIC, len(CODEC_NAME), CODEC_NAME, 0)[:8]
        if data and expected.startswith(bytes(data[:8])):
            raise TruncatedKeystoreError(
                f"truncated keystore: {len(data)} bytes, shorter than its {HEADER_LENGTH}-byte header"
            )
        raise NotAKeystoreError(f"not an elasticsearch.keystore file ({len(data)} bytes, no codec header)")
    magic, name_length, name, version = _HEADER.unpack_from(data)
    if magic != CODEC_MAGIC:
        raise NotAKeystoreError(
            f"not an elasticsearch.keystore file: it starts with 0x{magic:08X}, not the codec magic "
            f"0x{CODEC_MAGIC:08X}"
        )
    if name_length != len(CODEC_NAME) or name != CODEC_NAME:
        raise NotAKeystoreError(
            f"not an elasticsearch.keystore file: a Lucene file of codec {bytes(data[5 : 5 + name_length])!r}"
        )
    if version < MIN_VERSION:
        raise FormatTooOldError(
            f"keystore format version {version} is too old (Elasticsearch 6.2 or older, PKCS#12 inside): "
            "formats 3 to 7 are read; upgrade it with a newer elasticsearch-keystore",
            version,
        )
    if version > MAX_VERSION:
        raise FormatTooNewError(
            f"keystore format version {version} is newer than this espm knows (3 to 7, "
            "Elasticsearch 6.3 to 9.x)",
            version,
        )
    return int(version)


def _password_flag(data: bytes) -> bool:
    flag = data[HEADER_LENGTH - 1]
    if flag not in (0, 1):
        raise CorruptedKeystoreError(f"corrupted keystore: password flag is {flag}, not 0 or 1")
    return flag == 1


def _split_body(data: bytes, params: FormatParams) -> tuple[bytes, bytes, bytes]:
    """(salt, IV, ciphertext + tag), once the footer, the CRC and every length agree."""
    view = memoryview(data)
    # An in-place change anywhere is a bad CRC: check it first, while the footer is where it
    # belongs, so that a flipped length byte is not misreported as a truncation.
    if len(data) >= HEADER_LENGTH + FOOTER_LENGTH:
        magic, algorithm, stored = _FOOTER.unpack_from(data, len(data) - FOOTER_LENGTH)
        if magic == FOOTER_MAGIC and algorithm == 0:
            actual = zlib.crc32(view[: len(data) - 8])
            if stored != actual:
                raise ChecksumMismatchError(
                    f"keystore checksum mismatch: the footer says CRC-32 0x{stored:08X}, the "
                    f"bytes give 0x{actual:08X} (the file was changed or damaged)"
                )
    i32 = struct.Struct("<i" if params.little_endian else ">i")
    offset = HEADER_LENGTH

    def read_i32(what: str) -> int:
        nonlocal offset
        if offset + 4 > len(data):
            raise TruncatedKeystoreError(f"truncated keystore: it ends inside the {what} ({len(data)} bytes)")
        (value,) = i32.unpack_from(data, offset)
        offset += 4
        if value < 0:
            raise CorruptedKeystoreError(f"corrupted keystore: negative {what} {value}")
        return int(value)

    def read_bytes(length: int, what: str) -> bytes:
        nonlocal offset
        if offset + length > len(data):
            raise TruncatedKeystoreError(
                f"truncated keystore: the {what} needs {length} bytes at offset {offset}, "
                f"the file has {len(data)}"
            )
        chunk = bytes(view[offset : offset + length])
        offset += length
        return chunk

    data_length = read_i32("data length")
    salt = read_bytes(read_i32("salt length"), "salt")
    iv = read_bytes(read_i32("IV length"), "IV")
    sealed = read_bytes(read_i32("ciphertext length"), "ciphertext")
    if data_length != 12 + len(salt) + len(iv) + len(sealed):
        raise CorruptedKeystoreError(
            f"corrupted keystore: data length {data_length} is not 12 + salt {len(salt)} + IV "
            f"{len(iv)} + ciphertext {len(sealed)}"
        )
    if not salt or not iv or len(sealed) < crypto.TAG_LENGTH:
        raise CorruptedKeystoreError(
            f"corrupted keystore: salt {len(salt)}, IV {len(iv)}, ciphertext {len(sealed)} bytes "
            f"(the ciphertext holds at least a {crypto.TAG_LENGTH}-byte tag)"
        )
    end = offset + FOOTER_LENGTH
    if len(data) < end:
        raise TruncatedKeystoreError(
            f"truncated keystore: {len(data)} bytes, its lengths say {end} (the footer is cut)"
        )
    if len(data) > end:
        raise CorruptedKeystoreError(f"corrupted keystore: {len(data) - end} bytes after the codec footer")
    magic, algorithm, _ = _FOOTER.unpack_from(data, offset)
    if magic != FOOTER_MAGIC or algorithm != 0:
        raise CorruptedKeystoreError(
            f"corrupted keystore: no codec footer (0x{magic:08X}, algorithm {algorithm}) after the ciphertext"
        )
    return salt, iv, sealed


def _parse_payload(payload: bytes, version: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """Entries (stored order) and, for format 3, their legacy types, from the decrypted payload."""
    offset = 0

    def take(length: int, what: str) -> bytes:
        nonlocal offset
        if length < 0 or offset + length > len(payload):
            raise CorruptedKeystoreError(
                f"corrupted keystore payload: {what} needs {length} bytes at offset {offset} "
                f"of {len(payload)}"
            )
        chunk = payload[offset : offset + length]
        offset += length
        return chunk

    def read_utf(what: str) -> str:
        (length,) = struct.unpack(">H", take(2, f"the length of {what}"))
        raw = take(length, what)
        try:
            return _from_modified_utf8(raw)
        except UnicodeDecodeError as exc:
            raise CorruptedKeystoreError(
                f"corrupted keystore payload: {what} is not modified UTF-8 ({exc})"
            ) from None

    (count,) = struct.unpack(">i", take(4, "the entry count"))
    if count < 0:
        raise CorruptedKeystoreError(f"corrupted keystore payload: negative entry count {count}")
    entries: dict[str, bytes] = {}
    types: dict[str, str] = {}
    for index in range(count):
        name = read_utf(f"the name of entry {index}")
        if name in entries:
            raise CorruptedKeystoreError(f"corrupted keystore payload: entry [{name}] is stored twice")
        if version == 3:
            kind = read_utf(f"the type of entry [{name}]")
            if kind not in LEGACY_TYPES:
                raise CorruptedKeystoreError(
                    f"corrupted keystore payload: entry [{name}] has type {kind!r}, not STRING or FILE"
                )
            types[name] = kind
        (length,) = struct.unpack(">i", take(4, f"the length of [{name}]"))
        entries[name] = take(length, f"the value of [{name}]")
    if offset != len(payload):
        raise CorruptedKeystoreError(
            f"corrupted keystore payload: {len(payload) - offset} bytes after the {count} entries"
        )
    return entries, types


def _build_payload(keystore: Keystore) -> bytes:
    parts = [struct.pack(">i", len(keystore.entries))]
    for name, value in keystore.entries.items():
        parts.append(_utf(name, "setting name"))
        if keystore.version == 3:
            parts.append(_utf(keystore.legacy_types.get(name, "STRING"), "legacy type"))
        if len(value) > _I32_MAX:
            raise InvalidEntryError(f"the value of [{name}] is {len(value)} bytes, over 2 GiB")
        parts.append(struct.pack(">i", len(value)))
        parts.append(bytes(value))
    return b"".join(parts)


def _utf(text: str, what: str) -> bytes:
    """Java's DataOutput.writeUTF: a u16 length, then modified UTF-8."""
    raw = _to_modified_utf8(text)
    if len(raw) > 0xFFFF:
        raise InvalidEntryError(f"{what} [{text[:40]}...] is {len(raw)} bytes in modified UTF-8, over 65535")
    return struct.pack(">H", len(raw)) + raw


def _to_modified_utf8(text: str) -> bytes:
    """Java's modified UTF-8: NUL as C0 80, characters beyond U+FFFF as two 3-byte surrogates."""
    if text.isascii() and "\x00" not in text:
        return text.encode("ascii")
    utf16 = text.encode("utf-16-be", "surrogatepass")
    units = struct.unpack(f">{len(utf16) // 2}H", utf16)
    return b"".join(
        b"\xc0\x80" if unit == 0 else chr(unit).encode("utf-8", "surrogatepass") for unit in units
    )


def _from_modified_utf8(raw: bytes) -> str:
    if raw.isascii():
        return raw.decode("ascii")
    # CESU-8 surrogates decode one by one with surrogatepass; the UTF-16 round trip pairs them.
    text = raw.replace(b"\xc0\x80", b"\x00").decode("utf-8", "surrogatepass")
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be")
