"""AES-GCM through the process's own libcrypto, checked against the `cryptography` package."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from espm.keystore import crypto


@pytest.mark.parametrize("key_bytes", [16, 32])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 1_000_003])
def test_aes_gcm_matches_the_cryptography_package_both_ways(key_bytes: int, size: int) -> None:
    key, iv, aad, plaintext = os.urandom(key_bytes), os.urandom(12), os.urandom(64), os.urandom(size)
    sealed = crypto.aes_gcm_encrypt(key, iv, plaintext, aad)
    assert sealed == AESGCM(key).encrypt(iv, plaintext, aad)
    assert crypto.aes_gcm_decrypt(key, iv, sealed, aad) == plaintext


@pytest.mark.parametrize("what", ["ciphertext", "tag", "aad", "key", "iv"])
def test_any_change_fails_the_tag(what: str) -> None:
    key, iv, aad = os.urandom(16), os.urandom(12), os.urandom(64)
    sealed = bytearray(crypto.aes_gcm_encrypt(key, iv, b"value" * 10, aad))
    if what == "ciphertext":
        sealed[3] ^= 1
    elif what == "tag":
        sealed[-1] ^= 0x80
    elif what == "aad":
        aad = aad[:-1] + bytes([aad[-1] ^ 1])
    elif what == "key":
        key = bytes(16)
    else:
        iv = bytes(12)
    with pytest.raises(crypto.AuthenticationError):
        crypto.aes_gcm_decrypt(key, iv, bytes(sealed), aad)


def test_data_shorter_than_a_tag_fails_and_bad_parameters_are_refused() -> None:
    with pytest.raises(crypto.AuthenticationError, match="cannot hold"):
        crypto.aes_gcm_decrypt(bytes(16), bytes(12), b"short", b"")
    with pytest.raises(ValueError, match="16 or 32 bytes, not 24"):
        crypto.aes_gcm_encrypt(bytes(24), bytes(12), b"x", b"")
    with pytest.raises(ValueError, match="IV"):
        crypto.aes_gcm_encrypt(bytes(16), b"", b"x", b"")


def test_pbkdf2_matches_the_cryptography_package() -> None:
    salt = os.urandom(64)
    for rounds, length in ((1, 16), (10_000, 16), (10_000, 32)):
        expected = PBKDF2HMAC(hashes.SHA512(), length, salt, rounds).derive("pässword".encode())
        assert crypto.pbkdf2_sha512("pässword".encode(), salt, rounds, length) == expected


def test_the_libcrypto_bound_is_the_one_this_process_already_mapped() -> None:
    hashlib.sha256()  # _hashlib is loaded, hence its libcrypto
    with open("/proc/self/maps") as maps:
        mapped = {line.split()[-1] for line in maps if "libcrypto" in line}
    assert crypto.libcrypto_path() in mapped


def test_no_usable_libcrypto_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_candidates", lambda: iter(["/nonexistent/libcrypto.so.3", "/bin/true"]))
    with pytest.raises(
        crypto.CryptoUnavailableError, match=r"OpenSSL's libcrypto .* tried /nonexistent/libcrypto.so.3"
    ):
        crypto._find()
    monkeypatch.setattr(crypto, "_candidates", lambda: iter([]))
    with pytest.raises(crypto.CryptoUnavailableError, match="none was found"):
        crypto._find()
