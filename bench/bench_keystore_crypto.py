"""The keystore's crypto options side by side: RSS each adds to a process, and time per operation.

Options for AES-GCM: ctypes over the libcrypto `ssl`/`_hashlib` already mapped (espm.keystore.crypto),
the `cryptography` package, and a short-lived helper process (a fresh interpreter that imports
`cryptography`, decrypts and exits). For PBKDF2-HMAC-SHA512: hashlib, `cryptography`, and
PKCS5_PBKDF2_HMAC through the same ctypes binding.

RSS: each option runs in a fresh interpreter that has already imported asyncio, logging, ssl,
hashlib and espm.keystore (the manager with TLS and the updater on has them all); VmRSS is read
before and after the import plus one operation, and the median of RUNS deltas is printed. The
anchor is the same interpreter doing nothing more. Time: the median of repeated calls in this
process, the options called in turn round after round (the machine is shared: compare figures
of one run only). The `cryptography` wheel brings its own OpenSSL, which may be newer and faster
than the system's: its version is printed.

    python bench/bench_keystore_crypto.py
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

RUNS = 5
PYTHON = sys.executable

RSS_PROBE = """
import asyncio, hashlib, logging, os, ssl, sys
import espm.keystore
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
key, iv, salt = bytes(16), bytes(12), bytes(64)
option = sys.argv[1]
if option == "espm.keystore.crypto (ctypes)":
    from espm.keystore import crypto
    crypto.aes_gcm_decrypt(key, iv, crypto.aes_gcm_encrypt(key, iv, b"x" * 5000, salt), salt)
elif option == "cryptography AESGCM":
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    AESGCM(key).decrypt(iv, AESGCM(key).encrypt(iv, b"x" * 5000, salt), salt)
elif option == "hashlib.pbkdf2_hmac":
    hashlib.pbkdf2_hmac("sha512", b"", salt, 10000, 16)
elif option == "cryptography PBKDF2HMAC":
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
    PBKDF2HMAC(hashes.SHA512(), 16, salt, 10000).derive(b"")
elif option == "ctypes alone":
    import ctypes
print(rss() - before)
"""

HELPER = """
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(AESGCM(data[:16]).decrypt(data[16:28], data[92:], data[28:92]))
"""


def rss_delta_kib(option: str) -> float:
    deltas = []
    for _ in range(RUNS):
        out = subprocess.run([PYTHON, "-c", RSS_PROBE, option], capture_output=True, text=True, check=True)
        deltas.append(int(out.stdout))
    return statistics.median(deltas)


def timed(options: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of one call of each option, the options called in turn, `repeat` rounds."""
    samples: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(repeat):
        for name, fn in options.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    import compileall

    import espm

    # As bench/run.py does: an editable install has no .pyc files, and compiling a module from
    # source costs RSS of its own (0.7 MiB for crypto.py, measured) that an installed espm never pays.
    compileall.compile_dir(os.path.dirname(espm.__file__), quiet=1)

    from cryptography.hazmat.backends.openssl.backend import backend
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    from espm.keystore import crypto

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"  libcrypto used by espm: {crypto.libcrypto_path()} ({ssl.OPENSSL_VERSION})")
    print(f"  the cryptography package's own: {backend.openssl_version_text()}")
    print()
    print(
        f"RSS added to a process that already imported what the manager has (median of {RUNS} interpreters)"
    )
    anchor = rss_delta_kib("nothing (anchor)")
    print(f"  {'nothing (anchor)':34} {anchor / 1024:6.2f} MiB")
    for option in (
        "ctypes alone",
        "espm.keystore.crypto (ctypes)",
        "hashlib.pbkdf2_hmac",
        "cryptography AESGCM",
        "cryptography PBKDF2HMAC",
    ):
        delta = rss_delta_kib(option)
        print(f"  {option:34} {delta / 1024:6.2f} MiB  ({(delta - anchor) / 1024:+.2f} over the anchor)")

    lib = crypto._libcrypto()._lib
    lib.EVP_sha512.restype = ctypes.c_void_p
    lib.PKCS5_PBKDF2_HMAC.restype = ctypes.c_int
    lib.PKCS5_PBKDF2_HMAC.argtypes = [
        ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
        ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
    ]  # fmt: skip

    def ctypes_pbkdf2(rounds: int) -> bytes:
        out = ctypes.create_string_buffer(16)
        if lib.PKCS5_PBKDF2_HMAC(b"", 0, salt, 64, rounds, lib.EVP_sha512(), 16, out) != 1:
            raise RuntimeError("PKCS5_PBKDF2_HMAC failed")
        return out.raw

    salt = os.urandom(64)
    print()
    print("PBKDF2-HMAC-SHA512, one 16-byte key (median)")
    for rounds, repeat in ((10_000, 21), (210_000, 7)):
        figures = timed(
            {
                "hashlib.pbkdf2_hmac": lambda r=rounds: hashlib.pbkdf2_hmac("sha512", b"", salt, r, 16),
                "ctypes PKCS5_PBKDF2_HMAC": lambda r=rounds: ctypes_pbkdf2(r),
                "cryptography PBKDF2HMAC": lambda r=rounds: PBKDF2HMAC(hashes.SHA512(), 16, salt, r).derive(
                    b""
                ),
            },
            repeat,
        )
        for name, seconds in figures.items():
            print(f"  {rounds:>7,} rounds  {name:28} {seconds * 1000:8.2f} ms")

    key, iv = os.urandom(16), os.urandom(12)
    print()
    print("AES-128-GCM, encrypt then decrypt (median)")
    for size, label, repeat in ((5_000, "5 KB (100 settings)", 201), (1 << 20, "1 MiB", 21)):
        plaintext = os.urandom(size)
        sealed = AESGCM(key).encrypt(iv, plaintext, salt)
        figures = timed(
            {
                "espm.keystore.crypto (ctypes)": lambda p=plaintext: crypto.aes_gcm_decrypt(
                    key, iv, crypto.aes_gcm_encrypt(key, iv, p, salt), salt
                ),
                "cryptography AESGCM": lambda p=plaintext: AESGCM(key).decrypt(
                    iv, AESGCM(key).encrypt(iv, p, salt), salt
                ),
            },
            repeat,
        )
        if size == 5_000:
            message = key + iv + salt + sealed
            helper = {
                "helper process (decrypt only)": lambda m=message: subprocess.run(
                    [PYTHON, "-c", HELPER], input=m, capture_output=True, check=True
                )
            }
            figures.update(timed(helper, 9))
        for name, seconds in figures.items():
            print(f"  {label:20} {name:32} {seconds * 1e6:10.1f} us")


if __name__ == "__main__":
    main()
