"""AES-GCM, PBKDF2-HMAC-SHA512 and SHA-256 for the keystore, over the libcrypto the ssl module loaded.

AES-GCM is not in the standard library, so it is called through ctypes in the very libcrypto that
`_ssl` mapped into this process: no new shared library, no `cryptography` package (about 7.5 MiB
of RSS at import; the figures are in the README, keystore section, measured by
bench/bench_keystore_crypto.py). PBKDF2 and SHA-256 are OpenSSL's PKCS5_PBKDF2_HMAC and
EVP_Digest in the same library, the functions hashlib calls: importing hashlib (its `_hashlib`
fetches every digest of OpenSSL's providers at import) costs a running manager about 0.6 MiB of
RSS for these two calls.

The EVP calls used here (EVP_CIPHER_CTX_new/ctrl/free, EVP_{En,De}cryptInit_ex/Update/Final_ex,
EVP_aes_{128,256}_gcm, EVP_sha256/sha512, EVP_Digest, PKCS5_PBKDF2_HMAC) have the same signatures
in OpenSSL 1.1 and 3.x. Every return code is checked, every context is freed, and a failure clears
OpenSSL's per-thread error queue so that the ssl module never finds a stale error of ours in it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator

TAG_LENGTH = 16

# openssl/evp.h: the same values in 1.1 and 3.x (EVP_CTRL_AEAD_* are aliases of these).
_EVP_CTRL_GCM_SET_IVLEN = 0x9
_EVP_CTRL_GCM_GET_TAG = 0x10
_EVP_CTRL_GCM_SET_TAG = 0x11


class CryptoUnavailableError(RuntimeError):
    """No usable libcrypto (OpenSSL 1.1 or 3.x with AES-GCM) could be found in this process."""


class CryptoError(RuntimeError):
    """An OpenSSL call failed for a reason other than a bad tag."""


class AuthenticationError(Exception):
    """The AES-GCM tag does not match: wrong key, or the data or its AAD were changed."""


def pbkdf2_sha512(password: bytes, salt: bytes, rounds: int, length: int) -> bytes:
    """PBKDF2-HMAC-SHA512 of `password` and `salt`, `length` bytes long."""
    if rounds < 1 or length < 1:
        raise ValueError(f"PBKDF2 needs at least 1 round and 1 byte, not {rounds} and {length}")
    return _libcrypto().pbkdf2_sha512(password, salt, rounds, length)


def sha256(data: bytes) -> bytes:
    """The SHA-256 digest of `data` (32 bytes)."""
    return _libcrypto().sha256(data)


def aes_gcm_encrypt(key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM (128 or 256 by the key's length): the ciphertext followed by its 16-byte tag."""
    return _libcrypto().encrypt(key, iv, plaintext, aad)


def aes_gcm_decrypt(key: bytes, iv: bytes, data: bytes, aad: bytes) -> bytes:
    """Inverse of `aes_gcm_encrypt`; raises AuthenticationError when the tag does not match."""
    if len(data) < TAG_LENGTH:
        raise AuthenticationError(f"{len(data)} bytes cannot hold a {TAG_LENGTH}-byte GCM tag")
    return _libcrypto().decrypt(key, iv, data, aad)


def libcrypto_path() -> str:
    """Where the libcrypto in use was found (for logs and the benchmark)."""
    return _libcrypto().path


_lock = threading.Lock()
_loaded: _Libcrypto | None = None


def _libcrypto() -> _Libcrypto:
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _find()
        return _loaded


def _candidates() -> Iterator[str | None]:
    """Places to look for libcrypto, the one already in this process first."""
    # Importing one maps the libcrypto CPython was built against (in a frozen executable: the
    # copy bundled beside it), so the library we bind is the one that is already paid for.
    # _ssl first: the updater's Elasticsearch client has it loaded already, while _hashlib's
    # import would cost 0.5 MiB more (it fetches every digest at import).
    for module in ("_ssl", "_hashlib"):
        try:
            __import__(module)
            break
        except ImportError:
            pass  # a Python built without it: the other places below may still have one
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            seen: set[str] = set()
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    path = fields[5].strip()
                    if os.path.basename(path).startswith("libcrypto") and path not in seen:
                        seen.add(path)
                        yield path
    except OSError:
        pass  # no /proc (not Linux, or not mounted): fall through to the extension modules
    # A Python with OpenSSL linked statically into its executable or libpython exports the EVP
    # functions globally: dlopen(NULL) finds them there.
    yield None
    # A statically linked _hashlib exports nothing, but a dynamically linked one resolves symbols
    # through its own dependencies, which include libcrypto.
    for module in ("_hashlib", "_ssl"):
        try:
            file = __import__(module).__file__
        except (ImportError, AttributeError):
            continue
        if file:
            yield file
    # Last resort, and imported only here: ctypes.util pulls in shutil, bz2, lzma and tempfile
    # (1.7 MiB of RSS, measured), which a process that found its libcrypto above never needs.
    import ctypes.util

    found = ctypes.util.find_library("crypto")
    if found:
        yield found


def _find() -> _Libcrypto:
    tried: list[str] = []
    for path in _candidates():
        try:
            return _Libcrypto(path)
        except (OSError, AttributeError) as exc:
            tried.append(f"{path or 'the global symbols'} ({exc})")
    raise CryptoUnavailableError(
        "AES-GCM needs OpenSSL's libcrypto (1.1 or 3.x) and none was usable"
        + (": tried " + "; ".join(tried) if tried else ": none was found in this process or by find_library")
    )


_c_int_p = ctypes.POINTER(ctypes.c_int)


class _Libcrypto:
    """The few EVP functions AES-GCM needs, bound once."""

    def __init__(self, path: str | None) -> None:
        lib = ctypes.CDLL(path)
        self.path = path or "the process's global symbols"
        for name in ("EVP_aes_128_gcm", "EVP_aes_256_gcm"):
            getattr(lib, name).restype = ctypes.c_void_p
            getattr(lib, name).argtypes = []
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_new.argtypes = []
        lib.EVP_CIPHER_CTX_free.restype = None
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_CIPHER_CTX_ctrl.restype = ctypes.c_int
        lib.EVP_CIPHER_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_char_p,
            ]
        for name in ("EVP_EncryptUpdate", "EVP_DecryptUpdate"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _c_int_p, ctypes.c_char_p, ctypes.c_int]
        for name in ("EVP_EncryptFinal_ex", "EVP_DecryptFinal_ex"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _c_int_p]
        lib.ERR_clear_error.restype = None
        lib.ERR_clear_error.argtypes = []
        for name in ("EVP_sha256", "EVP_sha512"):
            getattr(lib, name).restype = ctypes.c_void_p
            getattr(lib, name).argtypes = []
        lib.EVP_Digest.restype = ctypes.c_int
        lib.EVP_Digest.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.PKCS5_PBKDF2_HMAC.restype = ctypes.c_int
        lib.PKCS5_PBKDF2_HMAC.argtypes = [
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self._sha256 = lib.EVP_sha256()
        self._sha512 = lib.EVP_sha512()
        if not self._sha256 or not self._sha512:
            raise OSError("this libcrypto has no SHA-2")
        self._aes_128_gcm = lib.EVP_aes_128_gcm()
        self._aes_256_gcm = lib.EVP_aes_256_gcm()
        if not self._aes_128_gcm or not self._aes_256_gcm:
            raise OSError("this libcrypto has no AES-GCM")
        self._lib = lib

    def _cipher(self, key: bytes) -> int:
        if len(key) == 16:
            return int(self._aes_128_gcm)
        if len(key) == 32:
            return int(self._aes_256_gcm)
        raise ValueError(f"an AES-GCM key is 16 or 32 bytes, not {len(key)}")

    def pbkdf2_sha512(self, password: bytes, salt: bytes, rounds: int, length: int) -> bytes:
        out = ctypes.create_string_buffer(length)
        # ctypes lets go of the GIL for the call, as hashlib does: rounds take a while.
        ok = self._lib.PKCS5_PBKDF2_HMAC(
            password, len(password), salt, len(salt), rounds, self._sha512, length, out
        )
        self._check(ok, "PKCS5_PBKDF2_HMAC")
        return out.raw

    def sha256(self, data: bytes) -> bytes:
        out = ctypes.create_string_buffer(32)
        self._check(self._lib.EVP_Digest(data, len(data), out, None, self._sha256, None), "EVP_Digest")
        return out.raw

    def _check(self, ok: int, call: str) -> None:
        if ok != 1:
            self._lib.ERR_clear_error()
            raise CryptoError(f"{call} failed (libcrypto {self.path})")

    def _start(self, key: bytes, iv: bytes, aad: bytes, encrypt: bool) -> int:
        """A context ready to take the payload: cipher, IV length, key, IV and AAD set."""
        if not iv:
            raise ValueError("an AES-GCM IV cannot be empty")
        cipher = self._cipher(key)
        lib = self._lib
        ctx = lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise CryptoError("EVP_CIPHER_CTX_new failed: out of memory")
        try:
            init = lib.EVP_EncryptInit_ex if encrypt else lib.EVP_DecryptInit_ex
            update = lib.EVP_EncryptUpdate if encrypt else lib.EVP_DecryptUpdate
            self._check(init(ctx, cipher, None, None, None), "EVP_CipherInit_ex (cipher)")
            self._check(
                lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_IVLEN, len(iv), None), "EVP_CTRL_GCM_SET_IVLEN"
            )
            self._check(init(ctx, None, None, key, iv), "EVP_CipherInit_ex (key, IV)")
            outl = ctypes.c_int(0)
            # A NULL output buffer makes this update feed additional authenticated data.
            self._check(update(ctx, None, ctypes.byref(outl), aad, len(aad)), "EVP_CipherUpdate (AAD)")
        except BaseException:
            lib.EVP_CIPHER_CTX_free(ctx)
            raise
        return int(ctx)

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        lib = self._lib
        ctx = self._start(key, iv, aad, encrypt=True)
        try:
            # GCM is a stream mode: the output is exactly as long as the input; the tag follows.
            out = ctypes.create_string_buffer(len(plaintext) + TAG_LENGTH)
            outl = ctypes.c_int(0)
            self._check(
                lib.EVP_EncryptUpdate(ctx, out, ctypes.byref(outl), plaintext, len(plaintext)),
                "EVP_EncryptUpdate",
            )
            total = outl.value
            tail = ctypes.c_int(0)
            self._check(
                lib.EVP_EncryptFinal_ex(ctx, ctypes.byref(out, total), ctypes.byref(tail)),
                "EVP_EncryptFinal_ex",
            )
            total += tail.value
            if total != len(plaintext):
                raise CryptoError(f"AES-GCM wrote {total} bytes for {len(plaintext)}")
            self._check(
                lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_GET_TAG, TAG_LENGTH, ctypes.byref(out, total)),
                "EVP_CTRL_GCM_GET_TAG",
            )
            return out.raw
        finally:
            lib.EVP_CIPHER_CTX_free(ctx)

    def decrypt(self, key: bytes, iv: bytes, data: bytes, aad: bytes) -> bytes:
        lib = self._lib
        ciphertext, tag = data[:-TAG_LENGTH], data[-TAG_LENGTH:]
        ctx = self._start(key, iv, aad, encrypt=False)
        try:
            out = ctypes.create_string_buffer(max(len(ciphertext), 1))
            outl = ctypes.c_int(0)
            self._check(
                lib.EVP_DecryptUpdate(ctx, out, ctypes.byref(outl), ciphertext, len(ciphertext)),
                "EVP_DecryptUpdate",
            )
            total = outl.value
            tag_buffer = ctypes.create_string_buffer(tag, TAG_LENGTH)
            self._check(
                lib.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_TAG, TAG_LENGTH, tag_buffer),
                "EVP_CTRL_GCM_SET_TAG",
            )
            tail = ctypes.c_int(0)
            if lib.EVP_DecryptFinal_ex(ctx, ctypes.byref(out, total), ctypes.byref(tail)) != 1:
                lib.ERR_clear_error()
                raise AuthenticationError("the AES-GCM tag does not match")
            total += tail.value
            if total != len(ciphertext):
                raise CryptoError(f"AES-GCM gave {total} bytes for {len(ciphertext)}")
            return out.raw[:total]
        finally:
            lib.EVP_CIPHER_CTX_free(ctx)
