"""A small async Elasticsearch client: GET / and the reload secure settings call, over h11 + TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

from espm.config import KeystoreConfig

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
MAX_ANSWER = 4 * 1024 * 1024


class Unreachable(Exception):
    """No answer at all: refused, reset, timed out, or not HTTP."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer from Elasticsearch."""

    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def ca_context(ca_path: Path) -> ssl.SSLContext:
    """Trust the CA file, or every *.crt and *.pem in the folder; check the chain, not the name.

    The endpoint is a loopback address that the node's certificate does not name, as in the
    original, so the host name is not checked; the chain still is.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_path.is_dir():
        found = sorted(p for p in ca_path.iterdir() if p.suffix in (".crt", ".pem") and p.is_file())
        if not found:
            raise ssl.SSLError(f"no *.crt or *.pem file in {ca_path}")
        for path in found:
            context.load_verify_locations(cafile=path)
    else:
        context.load_verify_locations(cafile=ca_path)
    return context


class ElasticsearchClient:
    """Talks to KEYSTORE_ES_ENDPOINT with the updater's credentials; one request per connection."""

    def __init__(self, config: KeystoreConfig) -> None:
        parts = urlsplit(config.es_endpoint)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.base = parts.path.rstrip("/")
        self._ca_path = config.ca_certs_path
        self._context: ssl.SSLContext | None = None
        self._headers: list[tuple[str, str]] = [
            ("host", f"{self.host}:{self.port}"),
            ("user-agent", "espm"),
            ("accept", "application/json"),
            ("connection", "close"),
        ]
        if config.es_username:
            token = base64.b64encode(f"{config.es_username}:{config.es_password}".encode()).decode()
            self._headers.append(("authorization", f"Basic {token}"))

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self._context is None:
            # Read lazily, and again after a failure, so a CA mounted late is picked up.
            try:
                self._context = ca_context(self._ca_path)
            except (OSError, ssl.SSLError) as err:
                raise Unreachable(f"cannot load CA certificates from {self._ca_path}: {err}") from None
        return self._context

    async def get_root(self) -> Answer:
        return await self.request("GET", "/")

    async def reload_secure_settings(self, password: str = "") -> Answer:
        # The keystore's password (KEYSTORE_PASSWORD_FILE), for a password-protected keystore.
        body = json.dumps({"secure_settings_password": password}).encode() if password else b"{}"
        return await self.request("POST", "/_nodes/_local/reload_secure_settings", body)

    async def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        try:
            return await asyncio.wait_for(self._request(method, path, body), REQUEST_TIMEOUT)
        except TimeoutError:
            raise Unreachable(f"no answer within {REQUEST_TIMEOUT:.0f}s") from None

    async def _request(self, method: str, path: str, body: bytes | None) -> Answer:
        context = self._ssl()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise Unreachable(f"connect timed out after {CONNECT_TIMEOUT:.0f}s") from None
        except ssl.SSLError as err:
            self._context = None
            raise Unreachable(f"TLS failed: {err.reason or err}") from None
        except OSError as err:
            raise Unreachable(err.strerror or str(err)) from None
        conn = h11.Connection(h11.CLIENT)
        headers = list(self._headers)
        if body is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        try:
            out = conn.send(h11.Request(method=method, target=self.base + path, headers=headers))
            if body:
                out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
            out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
            writer.write(out)
            await writer.drain()
            status = 0
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_ANSWER:
                        raise Unreachable("answer too large")
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            return Answer(status, b"".join(chunks))
        except h11.ProtocolError as err:
            raise Unreachable(f"not an HTTP answer ({err})") from None
        except ssl.SSLError as err:
            raise Unreachable(f"TLS failed: {err.reason or err}") from None
        except OSError as err:
            raise Unreachable(err.strerror or str(err)) from None
        finally:
            writer.close()
