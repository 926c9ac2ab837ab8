"""A small async Elasticsearch client: GET / and the reload secure settings call, over h11 + TLS.

Rules of this module:
- Every answer is bounded: one deadline for the whole request (connect, handshake, answer), and
  caps on the head (bytes and headers) and the body. An endpoint that streams forever, trickles,
  or never answers costs a bounded amount of memory and time, however long it goes on.
- The TLS context is built once and rebuilt only when the CA files change (a context per attempt
  costs memory that the allocator does not give back). TLS runs on an `ssl.SSLObject` over the
  plain stream, not asyncio's SSL transport: that one keeps a 256 KiB buffer per connection in a
  reference cycle that only a full garbage collection frees, so failing handshakes once a second
  grew the process by megabytes a minute.
- A failure raises `Unreachable` whose message names the fault: the certificate check that
  failed (OpenSSL's verify message), a reset or a close and when it came, a timeout and what it
  was waiting for, an answer too large, or an answer whose JSON is not what Elasticsearch sends.
  Callers show that message as their reason, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

from espm.config import KeystoreConfig
from espm.wire import message_bytes

REQUEST_TIMEOUT = 30.0  # the whole request, from connect to the answer's last byte
CONNECT_TIMEOUT = 5.0
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
MAX_INFORMATIONAL = 10  # 1xx answers before the real one
MAX_ANSWER = 256 * 1024  # a node's reload answer is under 2 KiB, GET / under 1 KiB
READ_SIZE = 16 * 1024
RELOAD_PATH = "/_nodes/_local/reload_secure_settings"


class Unreachable(Exception):
    """No usable answer: refused, reset, timed out, refused by TLS, too large, or not Elasticsearch's."""


class UnexpectedAnswer(Unreachable):
    """An answer whose JSON does not have the shape Elasticsearch gives it."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer from Elasticsearch."""

    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return _loads(self.body)
        except ValueError:
            return None


def _loads(body: bytes) -> Any:
    """JSON from Elasticsearch; nesting too deep for the parser is a ValueError like any bad JSON."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def ca_files(ca_path: Path) -> list[Path]:
    """The CA file, or every *.crt and *.pem in the folder."""
    if ca_path.is_dir():
        return sorted(p for p in ca_path.iterdir() if p.suffix in (".crt", ".pem") and p.is_file())
    return [ca_path]


def ca_context(ca_path: Path) -> ssl.SSLContext:
    """Trust the CA file, or every *.crt and *.pem in the folder; check the chain, not the name.

    The endpoint is a loopback address that the node's certificate does not name, as in the
    original, so the host name is not checked; the chain still is.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    found = ca_files(ca_path)
    if not found:
        raise ssl.SSLError(f"no *.crt or *.pem file in {ca_path}")
    for path in found:
        context.load_verify_locations(cafile=path)
    return context


def _ca_stamp(ca_path: Path) -> tuple[object, ...]:
    try:
        stamps: list[object] = []
        for path in ca_files(ca_path):
            st = os.stat(path)
            stamps.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)
    except OSError as err:
        return (err.errno,)


class _Tls:
    """TLS over a plain stream with memory BIOs: the bytes are ours, nothing outlives the request."""

    def __init__(
        self, context: ssl.SSLContext, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        # An ASCII host goes as bytes: ssl encodes a str with the "idna" codec, whose import
        # (unicodedata, stringprep) costs half a MiB of RSS for nothing an ASCII name needs.
        server_hostname: str | bytes = host.encode("ascii") if host.isascii() else host
        self._obj = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self._reader = reader
        self._writer = writer

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _fill(self) -> None:
        await self._flush()
        data = await self._reader.read(READ_SIZE)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    # The waits are outside the `except` clauses: an error raised while one is handled would
    # carry it as __context__, and its traceback the frames that hold this object (a cycle).

    async def handshake(self) -> None:
        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            await self._fill()
        await self._flush()

    async def send(self, data: bytes) -> None:
        self._obj.write(data)
        await self._flush()

    async def recv(self) -> bytes:
        while True:
            try:
                return self._obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # The end of the stream, with or without close_notify: h11 knows whether the
                # answer was complete.
                return b""
            await self._fill()


class _Progress:
    """Where a request is, for the reason of a failure."""

    phase = "while connecting"


class ElasticsearchClient:
    """Talks to KEYSTORE_ES_ENDPOINT with the updater's credentials; one request per connection."""

    def __init__(
        self,
        config: KeystoreConfig,
        request_timeout: float = REQUEST_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        parts = urlsplit(config.es_endpoint)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.base = parts.path.rstrip("/")
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.max_answer = max_answer
        self._ca_path = config.ca_certs_path
        self._context: ssl.SSLContext | None = None
        self._ca_error: str | None = None
        self._stamp: tuple[object, ...] | None = None
        self.contexts_built = 0
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
        # Built again only when the files changed: a CA mounted late, or rotated, is picked up.
        stamp = _ca_stamp(self._ca_path)
        if stamp != self._stamp:
            self._stamp = stamp
            self._context = None
            self._ca_error = None
            try:
                self._context = ca_context(self._ca_path)
                self.contexts_built += 1
            except (OSError, ssl.SSLError) as err:
                reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
                self._ca_error = f"cannot load the CA certificates from {self._ca_path}: {reason}"
        if self._context is None:
            raise Unreachable(self._ca_error or f"no CA certificates in {self._ca_path}")
        return self._context

    async def get_root(self) -> Answer:
        answer = await self.request("GET", "/")
        if answer.status == 200:
            _check(answer, "GET /", _root_fault)
        return answer

    async def reload_secure_settings(self, password: str = "") -> Answer:
        body: dict[str, Any] = {}
        if password:
            # The keystore's password (KEYSTORE_PASSWORD_FILE), for a password-protected keystore.
            body["secure_settings_password"] = password
        answer = await self.request("POST", RELOAD_PATH, json.dumps(body).encode())
        if answer.status == 200:
            _check(answer, f"POST {RELOAD_PATH}", _reload_fault)
        return answer

    async def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        progress = _Progress()
        try:
            async with asyncio.timeout(self.request_timeout):
                return await self._request(method, path, body, progress)
        except TimeoutError:
            raise Unreachable(
                f"no answer from Elasticsearch within {self.request_timeout:g}s ({progress.phase})"
            ) from None

    async def _request(self, method: str, path: str, body: bytes | None, progress: _Progress) -> Answer:
        context = self._ssl()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_SIZE)
        except TimeoutError:
            raise Unreachable(f"cannot connect to Elasticsearch within {self.connect_timeout:g}s") from None
        except OSError as err:
            # asyncio's message is "Connect call failed (address)": the errno says why.
            why = os.strerror(err.errno) if err.errno else str(err)
            raise Unreachable(f"cannot connect to Elasticsearch at {self.host}:{self.port}: {why}") from None
        # The reason is raised after the handler, not in it, and the handled exception loses its
        # traceback: the stream reader keeps the exception of a reset, whose traceback holds the
        # frames that hold the reader (and the TLS object): a cycle that only a full garbage
        # collection frees, so that a retry once a second piled them up.
        failure = ""
        try:
            return await self._exchange(method, path, body, context, reader, writer, progress)
        except OSError as err:  # ssl.SSLError included
            err.__traceback__ = err.__context__ = None
            failure = self._failure(err, progress)
        finally:
            # Aborted, not closed: one request per connection, nothing more is owed to the peer.
            writer.transport.abort()
        raise Unreachable(failure)

    def _failure(self, err: OSError, progress: _Progress) -> str:
        if isinstance(err, ssl.SSLCertVerificationError):
            return (
                f"TLS: Elasticsearch's certificate failed the check: {err.verify_message} "
                f"(trusted CA: {self._ca_path})"
            )
        if isinstance(err, ssl.SSLError):
            return f"TLS failed {progress.phase}: {err.reason or err}"
        if isinstance(err, ConnectionResetError | BrokenPipeError):
            return f"Elasticsearch reset the connection {progress.phase}"
        return f"{err.strerror or err} {progress.phase}"

    async def _exchange(
        self,
        method: str,
        path: str,
        body: bytes | None,
        context: ssl.SSLContext | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        progress: _Progress,
    ) -> Answer:
        tls: _Tls | None = None
        if context is not None:
            progress.phase = "in the TLS handshake"
            tls = _Tls(context, self.host, reader, writer)
            await tls.handshake()
        progress.phase = "while sending the request"
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        headers = list(self._headers)
        if body is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        out = message_bytes(
            conn, h11.Request(method=method, target=self.base + path, headers=headers), body or b""
        )
        if tls is not None:
            await tls.send(out)
        else:
            writer.write(out)
            await writer.drain()
        progress.phase = "before answering"
        return await self._read(
            conn, tls.recv if tls is not None else partial(reader.read, READ_SIZE), progress
        )

    async def _read(
        self, conn: h11.Connection, recv: Callable[[], Awaitable[bytes]], progress: _Progress
    ) -> Answer:
        status = 0
        chunks: list[bytes] = []
        size = 0
        informational = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as err:
                if progress.phase == "before the answer was complete":
                    raise Unreachable(f"Elasticsearch closed the connection {progress.phase}") from None
                if err.error_status_hint == 431:  # h11's max_incomplete_event_size
                    raise Unreachable(f"an answer head larger than {MAX_HEAD // 1024} KiB") from None
                raise Unreachable(f"not an HTTP answer ({err})") from None
            if event is h11.NEED_DATA:
                data = await recv()
                if not data:
                    if status == 0:
                        raise Unreachable(f"Elasticsearch closed the connection {progress.phase}")
                    # A body read to the end of the connection ends here; any other is cut short.
                    progress.phase = "before the answer was complete"
                conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                informational += 1
                if informational > MAX_INFORMATIONAL:
                    raise Unreachable(f"more than {MAX_INFORMATIONAL} informational (1xx) answers")
            elif isinstance(event, h11.Response):
                if len(event.headers) > MAX_HEADERS:
                    raise Unreachable(f"an answer with more than {MAX_HEADERS} headers")
                status = event.status_code
                progress.phase = "while sending the answer"
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_answer:
                    raise Unreachable(
                        f"an answer larger than {self.max_answer // 1024} KiB: not one Elasticsearch gives"
                    )
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return Answer(status, b"".join(chunks))


# -- the shape of the answers the updater reads ----------------------------------------------

JSON_KINDS = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return JSON_KINDS.get(type(value), type(value).__name__)


def _check(answer: Answer, request: str, fault: Any) -> None:
    try:
        doc = _loads(answer.body)
    except ValueError:
        raise UnexpectedAnswer(f"unexpected answer to {request}: HTTP 200 without JSON") from None
    problem = fault(doc)
    if problem is not None:
        raise UnexpectedAnswer(f"unexpected answer to {request}: {problem}")


def _want(doc: dict[str, Any], key: str, *types: type, where: str = "") -> str | None:
    """None when `doc[key]` is absent or of one of `types` (true/false is not a number here)."""
    if key not in doc:
        return None
    value = doc[key]
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        return None
    want = " or ".join(dict.fromkeys(JSON_KINDS[t] for t in types))
    return f"`{where}{key}` is {_kind(value)}, not {want}"


def _root_fault(doc: Any) -> str | None:
    """What is wrong with the JSON of GET / (None: the fields the updater reads are sound)."""
    if not isinstance(doc, dict):
        return f"the body is {_kind(doc)}, not an object"
    problem = _want(doc, "version", dict)
    if problem is None and isinstance(doc.get("version"), dict):
        problem = _want(doc["version"], "number", str, type(None), where="version.")
    return problem


def _reload_fault(doc: Any) -> str | None:
    """What is wrong with the JSON of a reload answer (None: the fields the updater reads are sound)."""
    if not isinstance(doc, dict):
        return f"the body is {_kind(doc)}, not an object"
    problem = _want(doc, "_nodes", dict) or _want(doc, "nodes", dict)
    if problem is not None:
        return problem
    summary = doc.get("_nodes") or {}
    problem = _want(summary, "failed", int, where="_nodes.") or _want(
        summary, "failures", list, type(None), where="_nodes."
    )
    if problem is not None:
        return problem
    for node_id, node in (doc.get("nodes") or {}).items():
        if not isinstance(node, dict):
            return f"`nodes.{node_id}` is {_kind(node)}, not an object"
        where = f"nodes.{node_id}."
        problem = (
            _want(node, "name", str, type(None), where=where)
            or _want(node, "reload_exception", dict, str, type(None), where=where)
            or _want(node, "keystore_digest", str, type(None), where=where)
        )
        if problem is not None:
            return problem
    return None
