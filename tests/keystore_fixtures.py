"""Shared pieces for the keystore updater's end-to-end tests.

- `SecretDir`: a folder laid out as Kubernetes mounts a Secret (timestamped folder, `..data`
  symlink, visible names linked through `..data`) and updated the way the kubelet does it.
- `KeystoreSetup`: the source folder, the config folder holding the keystore, the wrapper script
  standing in for `elasticsearch-keystore` (it sources `tool.env` when that file exists, so a test
  can switch failures on and off while the manager runs), and its invocation log.
- The environment that points a manager's reloads at a stand-in Elasticsearch (tests/standin_es.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espm.standins.keystore_tool import logged_invocations, logged_runs, parse_keystore
from espm.standins.secret import SecretVolume
from tests.conftest import PYTHON, base_env, wait_for
from tests.standin_es import ES_PASSWORD, ES_USER, Pki, StandinEs

KEYSTORE = "elasticsearch.keystore"
WORK_PREFIX = ".espm-keystore-"
STANDIN_VERSION = "8.12.1"
_DECODED: dict[tuple[bytes, str], dict[str, bytes]] = {}


# --- the Secret folder ----------------------------------------------------------------------


class SecretDir(SecretVolume):
    """The Secret volume, plus a touch that changes nothing but the timestamps."""

    def touch(self) -> None:
        """Touch every visible name and its target: events, but no change of content."""
        for name in self.visible():
            os.utime(self.path / name)
            os.utime(self.path / name, follow_symlinks=False)


# --- the keystore tool and its folders ---------------------------------------------------------


@dataclass
class KeystoreSetup:
    root: Path
    secrets: SecretDir = field(init=False)
    conf: Path = field(init=False)
    binary: Path = field(init=False)
    log: Path = field(init=False)
    tool_env: Path = field(init=False)

    def __post_init__(self) -> None:
        self.secrets = SecretDir(self.root / "secrets")
        self.conf = self.root / "config"
        self.conf.mkdir()
        (self.root / "bin").mkdir()
        self.binary = self.root / "bin" / "elasticsearch-keystore"
        self.log = self.root / "tool.log"
        self.tool_env = self.root / "tool.env"
        self.binary.write_text(
            "#!/bin/sh\n"
            f'if [ -f "{self.tool_env}" ]; then . "{self.tool_env}"; fi\n'
            f'exec "{PYTHON}" -m espm.standins.keystore_tool "$@"\n'
        )
        self.binary.chmod(0o755)

    @property
    def keystore(self) -> Path:
        return self.conf / KEYSTORE

    @property
    def managed(self) -> Path:
        return self.conf / (KEYSTORE + ".managed")

    def env(self, **extra: str) -> dict[str, str]:
        """The manager's environment: updater on, everything in tmp_path."""
        settings = {
            "PM_KEYSTORE_UPDATER": "true",
            "KEYSTORE_SOURCE_DIR": str(self.secrets.path),
            "KEYSTORE_BINARY": str(self.binary),
            "KEYSTORE_PATH": str(self.keystore),
            "STANDIN_KEYSTORE_LOG": str(self.log),
            # The tool's path unless a test asks for another writer (the native one runs no tool).
            "KEYSTORE_WRITER": "tool",
            # A tool of 8.12 writes format 5 (10,000 PBKDF2 rounds, ~5 ms): these tests are about
            # the updater, not the cost of 210,000 rounds twice in every run of the stand-in.
            "STANDIN_KEYSTORE_VERSION": STANDIN_VERSION,
        }
        return base_env(**{**settings, **extra})

    def set_tool_env(self, text: str | None) -> None:
        """Shell lines the wrapper sources before each run (None: none)."""
        if text is None:
            self.tool_env.unlink(missing_ok=True)
        else:
            self.tool_env.write_text(text + "\n")

    def tool(self, *args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
        """Run the tool by hand against the real keystore (to prepare foreign entries)."""
        full = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
        full["STANDIN_KEYSTORE_VERSION"] = STANDIN_VERSION
        full.update(ES_PATH_CONF=str(self.conf), **env)
        return subprocess.run(
            [str(self.binary), *args], input=stdin, env=full, capture_output=True, timeout=20, check=True
        )

    def prepare_foreign_keystore(self) -> bytes:
        """A keystore made by the tool: keystore.seed and bootstrap.password, as ES images have."""
        self.tool("create")
        self.tool("add", "-x", "bootstrap.password", stdin=b"bootstrap-pw\n")
        return self.keystore.read_bytes()

    def settings(self, password: str = "") -> dict[str, bytes]:
        """The keystore's entries, decrypted (real format): cached by content, since formats 6
        and 7 cost 210,000 PBKDF2 rounds a read and tests poll this."""
        data = self.keystore.read_bytes()
        key = (hashlib.sha256(data).digest(), password)
        if key not in _DECODED:
            _DECODED[key] = parse_keystore(data, password)
        return dict(_DECODED[key])

    def runs(self) -> list[list[str]]:
        """argv of every tool run the manager made, in order."""
        return logged_runs(self.log)

    def run_folders(self) -> list[str]:
        """The name of the work folder (ES_PATH_CONF) of every tool run, in order."""
        return [Path(record["es_path_conf"]).name for record in logged_invocations(self.log)]

    def work_folders(self) -> list[str]:
        return sorted(p.name for p in self.conf.iterdir() if p.name.startswith(WORK_PREFIX))


def start(espm: Any, env: dict[str, str], command: list[str] | None = None, **kwargs: Any) -> Any:
    """A manager whose first build is done and whose watch is on (the API comes up before)."""
    manager = espm(command or CHILD, env=env, **kwargs)
    manager.wait_api()
    manager.wait_log("watching .* for changes")
    return manager


def shm_files_holding(needle: bytes) -> list[Path]:
    """Files under /dev/shm (the pod's shared tmpfs) whose bytes hold `needle`."""
    found = []
    for folder, _, files in os.walk("/dev/shm"):
        for name in files:
            path = Path(folder, name)
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue  # gone meanwhile, or another user's
    return found


def pairs_of(argv: list[str]) -> list[str]:
    """Setting names of an `add-file -f -- NAME PATH...` run (`--`: names are never options)."""
    assert argv[:3] == ["add-file", "-f", "--"], argv
    rest = argv[3:]
    assert len(rest) % 2 == 0, argv
    return rest[0::2]


def status(manager: Any) -> dict[str, Any]:
    code, doc, _ = manager.request("GET", "/keystore/status")
    assert code == 200, (code, doc)
    assert isinstance(doc, dict)
    return doc


def wait_status(manager: Any, predicate: Any, timeout: float = 10) -> dict[str, Any]:
    """Poll GET /keystore/status (conftest.wait_for's pace) until `predicate(status)` holds."""
    last: dict[str, Any] = {}

    def matched() -> dict[str, Any] | None:
        nonlocal last
        last = status(manager)
        return last if predicate(last) else None

    try:
        doc: dict[str, Any] = wait_for(matched, timeout)
    except AssertionError:
        raise AssertionError(f"keystore status never matched within {timeout}s; last: {last}") from None
    return doc


def wait_state(manager: Any, state: str, reason: str | None = None, timeout: float = 10) -> dict[str, Any]:
    return wait_status(
        manager,
        lambda s: s["state"] == state and (reason is None or s["reason"].startswith(reason)),
        timeout,
    )


def reload_env(ks: KeystoreSetup, es: StandinEs, pki: Pki, **extra: str) -> dict[str, str]:
    env = {
        "KEYSTORE_RELOAD_CREDENTIALS": "true",
        "KEYSTORE_ES_ENDPOINT": es.endpoint,
        "KEYSTORE_ES_USERNAME": ES_USER,
        "KEYSTORE_ES_PASSWORD": ES_PASSWORD,
        "KEYSTORE_ES_CA_CERTS_PATH": str(pki.ca),
    }
    env.update(extra)
    return ks.env(**env)


def b64(value: bytes) -> bytes:
    return base64.b64encode(value)


CHILD = ["sleep", "600"]
# Prints the setting names of the keystore file (argv[1]) as the child starts, then waits.
PRINT_NAMES = [
    sys.executable,
    "-c",
    "import sys, time; from pathlib import Path;"
    " from espm.standins.keystore_tool import read_keystore;"
    " s = read_keystore(Path(sys.argv[1])) or {};"
    " print(' '.join(f'{k}={v.hex()}' for k, v in sorted(s.items())), flush=True);"
    " time.sleep(600)",
]
