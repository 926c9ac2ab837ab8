"""The API and the Elasticsearch client do not load modules they can do without (each costs RSS)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
from espm.api.listener import open_listener
from espm.api.routes import Request, Router
import espm.api.server, espm.keystore.elasticsearch
open_listener("localhost", 0).close()
Router.openapi(None, Request("GET", "/openapi.json"))
print(sorted(m for m in sys.modules if m in {NAMES}))
"""
# http: 256 KiB for reason phrases; importlib.resources: 1 MiB (zipfile...) to read one file;
# encodings.idna: half a MiB (unicodedata, stringprep) to encode an ASCII host name.
AVOIDED = {"http", "importlib.resources", "zipfile", "encodings.idna", "unicodedata"}


def test_the_api_does_without_heavy_modules() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.replace("{NAMES}", repr(AVOIDED))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# The running manager's own paths with everything on: flags and environment, the keystore's
# crypto, folders and files, a snapshot of the Secret, the backoff, the Elasticsearch client's TLS,
# the API. Each module named here is what one of them used to import (measured with everything on:
# 26.5 MiB before, 24.7-24.8 after; bench/bench_memory.py).
RUN_PATH = """
import asyncio, os, ssl, sys
from pathlib import Path

work = Path(sys.argv[1])
from espm.cli import configure
from espm.config import unknown_variables

flags = ["--pm-http-port=0", "--pm-log-level", "info", "--", "true"]
config = configure(flags, {"PM_KEYSTORE_UPDATER": "false"})
assert (config.http.port, config.log.level) == (0, "info"), config
assert unknown_variables({"PM_HTTP_PORT": "1", "KEYSTORE_PASSWORD": "x"}) == []
import espm.manager, espm.api.server, espm.api.debug, espm.api.readiness, espm.keystore.updater
from espm.system import heap
from espm.keystore import crypto, files, format as ksf, status
from espm.keystore.elasticsearch import _Tls
from espm.keystore.source import read_snapshot
from espm.keystore.writer import sha256_file

held = files.LockedFolder(work, "espm-work-")
(held.path / "tmp").mkdir()
(held.path / "tmp" / "value").write_bytes(b"x")
held.remove()
assert not held.path.exists()
os.mkdir(work / "espm-work-abandoned")
assert files.remove_abandoned(work, "espm-work-") == ["espm-work-abandoned"]
path, fd = files.create_locked_file(work, ".ks.", ".tmp")
os.close(fd)
(work / "secret").mkdir()
(work / "secret" / "s3.client.default.access_key").write_bytes(b"a")
snapshot = read_snapshot(work / "secret")
snapshot.fingerprint()
keystore = ksf.decode(Path(sys.argv[2]).read_bytes(), "")
data = ksf.encode(keystore.with_entries({"s3.client.default.access_key": b"a"}), "")
assert ksf.decode(data, "").entries["s3.client.default.access_key"] == b"a"
path.write_bytes(data)
sha256_file(path)
status.backoff(3)
heap.trim()
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
_Tls(context, "127.0.0.1", None, None)
print(sorted(m for m in sys.modules if m in {NAMES}))
"""
# argparse with its help formatter (shutil, bz2, lzma, gettext) and difflib: 1.3 MiB, for flags
# and suggestions only; tempfile, shutil, random, secrets: 1 MiB, for names of temporary files;
# hashlib (its _hashlib fetches every OpenSSL digest at import): 0.6 MiB, for SHA-256 and PBKDF2,
# which crypto.py calls in libcrypto; encodings.idna: 0.45 MiB, for SNI with an ASCII address.
KEPT_OUT = {
    "argparse", "difflib", "gettext", "espm.suggest", "shutil", "bz2", "lzma", "tempfile", "random",
    "secrets", "hashlib", "_hashlib", "encodings.idna", "unicodedata",
}  # fmt: skip
KEYSTORE = (
    Path(__file__).resolve().parents[1] / "data" / "keystores" / "8.17.1-v6-kkkkknstntn-scraper.keystore"
)


def test_the_running_manager_does_without_heavy_modules(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RUN_PATH.replace("{NAMES}", repr(KEPT_OUT)), str(tmp_path), str(KEYSTORE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
