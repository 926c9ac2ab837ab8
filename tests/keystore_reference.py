"""An independent elasticsearch.keystore reader and writer for the tests: struct, hashlib and `cryptography`.

Written from KEYSTORE.md alone and checked against the real files, it shares no code with
espm.keystore.format, so a file espm writes is proved readable by something that is not espm.
The writer exists to build bad files (wrong counts, trailing bytes) that espm's writer refuses to make.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROUNDS = {3: 10_000, 4: 10_000, 5: 10_000, 6: 210_000, 7: 210_000}
KEY_BYTES = {3: 16, 4: 16, 5: 16, 6: 16, 7: 32}


@dataclass
class ReferenceKeystore:
    version: int
    has_password: bool
    salt: bytes
    iv: bytes
    payload: bytes
    entries: list[tuple[str, str | None, bytes]]  # (name, legacy type or None, value), stored order


# Remembered: the tests read the same file (same salt) again and again, and formats 6 and 7 cost
# 210,000 rounds a read (about 3.8 s of the suite's CPU before). PBKDF2 is a pure function.
@functools.cache
def _key(version: int, password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, ROUNDS[version], KEY_BYTES[version])


def java_utf(raw: bytes) -> str:
    """Java's modified UTF-8, decoded by hand: NUL as C0 80, astral characters as surrogate pairs."""
    units: list[int] = []
    i = 0
    while i < len(raw):
        b = raw[i]
        if b < 0x80:
            units.append(b)
            i += 1
        elif b >> 5 == 0b110:
            units.append(((b & 0x1F) << 6) | (raw[i + 1] & 0x3F))
            i += 2
        elif b >> 4 == 0b1110:
            units.append(((b & 0x0F) << 12) | ((raw[i + 1] & 0x3F) << 6) | (raw[i + 2] & 0x3F))
            i += 3
        else:
            raise ValueError(f"byte 0x{b:02X} cannot start a modified UTF-8 character")
    return struct.pack(f">{len(units)}H", *units).decode("utf-16-be")


def read(data: bytes, password: str = "") -> ReferenceKeystore:
    """Parse and decrypt; any damage raises (AssertionError, struct.error or InvalidTag)."""
    magic, name_len = struct.unpack_from(">IB", data, 0)
    assert magic == 0x3FD76C17
    assert data[5 : 5 + name_len] == b"elasticsearch.keystore"
    pos = 5 + name_len
    (version,) = struct.unpack_from(">I", data, pos)
    pos += 4
    assert 3 <= version <= 7, version
    has_password = data[pos]
    assert has_password in (0, 1)
    pos += 1
    e = "<" if version >= 5 else ">"
    (data_len,) = struct.unpack_from(e + "i", data, pos)
    pos += 4
    start = pos
    fields = []
    for _ in range(3):
        (n,) = struct.unpack_from(e + "i", data, pos)
        pos += 4
        fields.append(data[pos : pos + n])
        pos += n
    assert pos - start == data_len
    salt, iv, sealed = fields
    footer_magic, algorithm, crc = struct.unpack_from(">IIQ", data, pos)
    assert (footer_magic, algorithm) == (0xC02893E8, 0)
    assert pos + 16 == len(data)
    assert crc == zlib.crc32(data[: pos + 8])
    payload = AESGCM(_key(version, password, salt)).decrypt(iv, sealed, salt)
    entries: list[tuple[str, str | None, bytes]] = []
    (count,) = struct.unpack_from(">i", payload, 0)
    p = 4
    for _ in range(count):
        (n,) = struct.unpack_from(">H", payload, p)
        name = java_utf(payload[p + 2 : p + 2 + n])
        p += 2 + n
        kind = None
        if version == 3:
            (n,) = struct.unpack_from(">H", payload, p)
            kind = payload[p + 2 : p + 2 + n].decode("ascii")
            p += 2 + n
        (n,) = struct.unpack_from(">i", payload, p)
        entries.append((name, kind, payload[p + 4 : p + 4 + n]))
        assert p + 4 + n <= len(payload)
        p += 4 + n
    assert p == len(payload), "trailing payload bytes"
    return ReferenceKeystore(version, bool(has_password), salt, iv, payload, entries)


def payload(version: int, entries: list[tuple[str, bytes]], count: int | None = None) -> bytes:
    """A plaintext payload (ASCII names; format 3 entries typed STRING); `count` may lie."""
    out = [struct.pack(">i", len(entries) if count is None else count)]
    for name, value in entries:
        out.append(struct.pack(">H", len(name)) + name.encode("ascii"))
        if version == 3:
            out.append(struct.pack(">H", 6) + b"STRING")
        out.append(struct.pack(">i", len(value)) + value)
    return b"".join(out)


def write(
    version: int,
    plaintext: bytes,
    *,
    salt: bytes,
    iv: bytes,
    password: str = "",
    has_password: int | None = None,
) -> bytes:
    """A keystore file around any plaintext, with a correct CRC."""
    sealed = AESGCM(_key(version, password, salt)).encrypt(iv, plaintext, salt)
    e = "<" if version >= 5 else ">"
    flag = int(bool(password)) if has_password is None else has_password
    body = (
        struct.pack(">IB", 0x3FD76C17, 22)
        + b"elasticsearch.keystore"
        + struct.pack(">IB", version, flag)
        + struct.pack(e + "i", 12 + len(salt) + len(iv) + len(sealed))
        + struct.pack(e + "i", len(salt))
        + salt
        + struct.pack(e + "i", len(iv))
        + iv
        + struct.pack(e + "i", len(sealed))
        + sealed
        + struct.pack(">II", 0xC02893E8, 0)
    )
    return body + struct.pack(">Q", zlib.crc32(body))


def fix_crc(data: bytes) -> bytes:
    """The same bytes with the footer's CRC recomputed, so that another damage is what gets seen."""
    return data[:-8] + struct.pack(">Q", zlib.crc32(data[:-8]))
