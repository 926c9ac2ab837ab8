"""The keystore benchmarks' set-up: a kubelet-style Secret, a config folder, the stand-in tool."""

from __future__ import annotations

import random
from pathlib import Path

from harness import PYTHON, espm_env, free_port

from espm.keystore import format as ksf
from espm.standins.secret import SecretVolume

TOOL_DELAY = "0.7"  # STANDIN_KEYSTORE_DELAY: the stand-in tool sleeps as a JVM start would
EXTRA = "bench.extra.stale"  # the setting each measured change drops
KEYSTORE = "elasticsearch.keystore"


def setting_names(count: int, width: int) -> list[str]:
    """`bench.setting.s000`...: `width` digits, so that the names sort in their order."""
    return [f"bench.setting.s{i:0{width}d}" for i in range(count)]


def new_values(names: list[str], generation: int) -> dict[str, bytes]:
    """A new value for every name (random, so no change can match an older one)."""
    token = random.randbytes(6).hex()
    return {n: f"value-{generation}-{n}-{token}".encode() for n in names}


def write_tool(path: Path) -> Path:
    """An `elasticsearch-keystore` at `path` that runs espm's stand-in tool with this Python."""
    path.write_text(f'#!/bin/sh\nexec "{PYTHON}" -m espm.standins.keystore_tool "$@"\n')
    path.chmod(0o755)
    return path


def holds(path: Path, values: dict[str, bytes], removed: str | None) -> bool:
    """True when the keystore at `path` holds every one of `values` and not `removed`."""
    try:
        entries = ksf.decode(path.read_bytes()).entries
    except (OSError, ksf.KeystoreFormatError):
        return False
    if removed is not None and removed in entries:
        return False
    return all(entries.get(n) == v for n, v in values.items())


class Folders:
    """One case's folders: the Secret, the config folder with the keystore, the tool wrapper.

    With `fmt`, the keystore starts as one of that format version holding `bootstrap.password`;
    without, there is none until the first update writes it.
    """

    def __init__(self, root: Path, fmt: int | None = None) -> None:
        self.root = root
        self.secrets = SecretVolume(root / "secrets")
        self.conf = root / "config"
        self.conf.mkdir()
        (root / "bin").mkdir()
        self.tool = write_tool(root / "bin" / "elasticsearch-keystore")
        self.keystore = self.conf / KEYSTORE
        if fmt is not None:
            start = ksf.Keystore.new(fmt).with_entries({"bootstrap.password": b"bench-bootstrap"})
            self.keystore.write_bytes(ksf.encode(start))
            self.keystore.chmod(0o660)

    def seed(self, names: list[str]) -> dict[str, bytes]:
        """The Secret's first content: generation 0 of `names`, and EXTRA; returns the former."""
        current = new_values(names, 0)
        self.secrets.write({**current, EXTRA: b"extra-0"})
        return current

    def updater_env(self, writer: str, **overrides: str) -> tuple[int, dict[str, str]]:
        """A free API port, and espm's environment with the updater on over these folders."""
        port = free_port()
        env = espm_env(
            PM_KEYSTORE_UPDATER="true",
            PM_HTTP_PORT=str(port),
            KEYSTORE_SOURCE_DIR=str(self.secrets.path),
            KEYSTORE_BINARY=str(self.tool),
            KEYSTORE_PATH=str(self.keystore),
            KEYSTORE_WRITER=writer,
            **overrides,
        )
        return port, env

    def direct_env(self) -> dict[str, str]:
        """The environment to run the tool from here, on this config folder, with the delay."""
        return espm_env(STANDIN_KEYSTORE_DELAY=TOOL_DELAY, ES_PATH_CONF=str(self.conf))

    def value_files(self, values: dict[str, bytes]) -> list[str]:
        """`values` written as files under root/values; the `NAME PATH` pairs for `add-file`."""
        folder = self.root / "values"
        folder.mkdir(exist_ok=True)
        pairs: list[str] = []
        for name, value in values.items():
            (folder / name).write_bytes(value)
            pairs += [name, str(folder / name)]
        return pairs
