"""The one launcher of the stand-in Elasticsearch (espm.standins.elasticsearch) for the tests.

Each server runs as a real subprocess on a port chosen before it starts (so a manager can be
pointed at a server that is not up yet, and `--ready-after` can be tested), over TLS with a
certificate named for another host (the chain is checked, the host name is not) and basic auth,
unless told otherwise. `StandinEs.request` is a client for it; `EsLauncher.stop_all` ends them all.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.certs import CA
from tests.conftest import PYTHON, free_port

ES_USER = "elastic"
ES_PASSWORD = "pw-Zq8xK3vLq9-es"  # distinctive, so a leak is easy to find


@dataclass(frozen=True)
class Pki:
    ca: Path
    ca_folder: Path
    cert: Path
    key: Path


def make_pki(folder: Path) -> Pki:
    ca = CA(folder / "issuer", "espm test CA")
    # Named for another host on purpose: the chain is checked, the host name is not.
    node = ca.issue("es-node-0", dns=("es-node-0.example",), ips=("10.0.0.7",))
    pki = Pki(folder / "ca.pem", folder / "cas", node.cert, node.key)
    pki.ca.write_bytes(ca.path.read_bytes())
    pki.ca_folder.mkdir()
    (pki.ca_folder / "ca.crt").write_bytes(ca.path.read_bytes())
    (pki.ca_folder / "README").write_text("not a certificate\n")
    return pki


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: Any


@dataclass
class StandinEs:
    """A stand-in Elasticsearch (maybe not started yet) on a port of its own."""

    folder: Path
    port: int
    args: list[str]
    ca: Path | None  # None: plain HTTP
    keystore: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def mode(self, text: str) -> None:
        """What the server does from its next request on: ok, unavailable, slow, ... (atomic)."""
        tmp = self.folder / "mode.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.folder / "mode")

    def start(self, wait: bool = True) -> StandinEs:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
        with (self.folder / "stderr").open("ab") as stderr:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "espm.standins.elasticsearch", *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 10) -> int:
        """Wait until the server listens (it writes its port file then); its port."""
        assert self.process is not None
        port_file = self.folder / "port"
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.process.poll() is not None:
                pytest.fail(f"stand-in ES exited: {(self.folder / 'stderr').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"stand-in ES did not listen within {timeout} s")
            time.sleep(0.01)
        return int(port_file.read_text())

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        auth: tuple[str, str] | None = (ES_USER, ES_PASSWORD),
        headers: dict[str, str] | None = None,
    ) -> Answer:
        if self.ca is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        else:
            context = ssl.create_default_context(cafile=str(self.ca))
            context.check_hostname = False  # the certificate names another host on purpose
            connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=10)
        sent = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        return Answer(response.status, response.headers, json.loads(raw) if raw else None)

    def stats(self) -> Any:
        """The stand-in's request counters (no auth needed)."""
        return self.request("GET", "/_standin/stats", auth=None).body

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class EsLauncher:
    """Makes stand-in Elasticsearch servers, each in a folder of its own; `stop_all` ends them."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        self.folder = folder
        self.pki = pki
        self.made: list[StandinEs] = []

    def __call__(
        self,
        *extra: str,
        keystore: Path | None = None,
        start: bool = True,
        version: str | None = "8.15.0",
        tls: bool = True,
        auth: bool = True,
    ) -> StandinEs:
        """A server started with `extra` arguments (`start=False`: made, not started)."""
        folder = self.folder / f"es{len(self.made)}"
        folder.mkdir()
        port = free_port()
        keystore = keystore or folder / "elasticsearch.keystore"
        args = ["--port", str(port), "--port-file", str(folder / "port"), "--mode-file", str(folder / "mode")]
        args += ["--keystore", str(keystore)]
        if tls:
            args += ["--cert", str(self.pki.cert), "--key", str(self.pki.key)]
        if auth:
            args += ["--user", ES_USER, "--password", ES_PASSWORD]
        if version is not None:
            args += ["--version", version]
        es = StandinEs(folder, port, [*args, *extra], self.pki.ca if tls else None, keystore)
        self.made.append(es)
        if start:
            es.start()
        return es

    def stop_all(self) -> None:
        for es in self.made:
            if es.process is not None and es.process.poll() is None:
                es.process.terminate()
        for es in self.made:
            es.stop()
