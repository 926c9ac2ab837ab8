"""The HTTP(S) server: asyncio protocol + h11, with the limits that keep hostile clients harmless.

Rules of this module:
- h11 owns HTTP/1.1 correctness (framing, keep-alive, pipelining); this module owns the bytes,
  the limits and the clock. Routes are plain functions elsewhere; nothing here knows a path.
- Every limit answers as early as it can: an oversized head gets 431 and an oversized body 413
  before the body is read; then the connection lingers a moment, draining, so that the client
  reads the answer instead of a reset.
- One timer for all connections: a sweep every second closes those past their deadline (a
  request not finished within REQUEST_TIMEOUT, or a keep-alive idle for IDLE_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11

from espm.api import framing
from espm.api.routes import Request, Response, Router
from espm.api.tls import CertificateWatcher

if TYPE_CHECKING:
    from espm.manager import Manager

log = logging.getLogger("espm.api")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
MAX_CONNECTIONS = 512
REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 5.0  # as uvicorn: probes and the ctl client do not reuse connections
LINGER = 0.5
SCAN_STEP = 4096
SWEEP_INTERVAL = 1.0
SHUTDOWN_GRACE = 2.0

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


class Connection(asyncio.Protocol):
    """One client connection: bytes in, h11 events, routed responses out."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.deadline = 0.0
        self.idle = True
        self.busy = False
        self.lingering = False
        self.request: h11.Request | None = None
        self.head_only = False  # a HEAD request: the answer has headers only
        self.body = bytearray()
        # Bytes received and not yet passed to h11: h11 gets a request head only once it is
        # checked (framing.py), and a body only up to its end, so bytes that follow a refused
        # head are never parsed as a request.
        self.inbox = bytearray()
        self.head = bytearray()  # the current request's head as received
        self.remaining: int | None = 0  # body bytes still to pass on; None for a chunked body
        self.close_after = False
        self.eof = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            self.server.refused += 1
            transport.abort()
            return
        self.server.connections.add(self)
        self.deadline = self.server.now + IDLE_TIMEOUT

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.transport is None:
            return  # draining after a final answer
        if self.idle:
            self.idle = False
            self.deadline = self.server.now + REQUEST_TIMEOUT
        self.inbox += data
        if not self.busy:
            self._next_events()

    def eof_received(self) -> bool | None:
        if self.lingering:
            self._close()
            return None
        self.eof = True
        if not self.busy:
            self._next_events()
        return None

    def _feed(self) -> bool:
        """Pass h11 the next bytes it may see; False when there is nothing it may see yet."""
        h = self.h11
        inbox = self.inbox
        if h.their_state is h11.IDLE:
            if not inbox:
                return self._feed_eof()
            # A bounded slice: a pipelined flood is scanned a head at a time, not all at once.
            n, _, fault = framing.scan_head(self.head, inbox[:SCAN_STEP])
            if fault is not None:
                self._fail(400, fault)
                return False
            if len(self.head) + n > MAX_HEAD:
                self._fail(431, f"request line and headers larger than {MAX_HEAD} bytes")
                return False
            chunk = bytes(inbox[:n])
            del inbox[:n]
            self.head += chunk
            h.receive_data(chunk)
            return True
        if h.their_state is h11.SEND_BODY:
            if not inbox:
                return self._feed_eof()
            n = len(inbox) if self.remaining is None else min(self.remaining, len(inbox))
            chunk = bytes(inbox[:n])
            del inbox[:n]
            if self.remaining is not None:
                self.remaining -= n
            h.receive_data(chunk)
            return True
        return False  # the request is in: what follows waits for this answer

    def _feed_eof(self) -> bool:
        if not self.eof or self.h11.their_state not in (h11.IDLE, h11.SEND_BODY):
            return False
        self.eof = False
        self.h11.receive_data(b"")
        return True

    # -- request cycle -----------------------------------------------------------------------

    def _next_events(self) -> None:
        h = self.h11
        while self.transport is not None and not self.busy and not self.lingering:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as err:
                self._fail(err.error_status_hint, str(err))
                return
            if event is h11.NEED_DATA:
                if self._feed():
                    continue
                return
            if event is h11.PAUSED:
                return  # a pipelined request waits until this cycle's answer is out
            if isinstance(event, h11.Request):
                if not self._accept_head(event):
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_BODY:
                    self._fail(413, f"request body larger than {MAX_BODY} bytes")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _accept_head(self, event: h11.Request) -> bool:
        # h11's own cap does not fire when a whole oversized head arrives in one read.
        size = len(event.method) + len(event.target) + 12
        for name, value in event.headers:
            size += len(name) + len(value) + 4
        if size > MAX_HEAD:
            self._fail(431, f"request line and headers larger than {MAX_HEAD} bytes")
            return False
        if event.http_version not in (b"1.0", b"1.1"):
            self._fail(505, f"HTTP/{event.http_version.decode()} is not supported; use HTTP/1.1")
            return False
        fault = framing.head_fault(self.head, event.http_version)
        if fault is not None:
            self._fail(400, fault)
            return False
        self.remaining = 0
        for name, value in event.headers:
            if name == b"content-length":
                self.remaining = int(value)
                if self.remaining > MAX_BODY:
                    self._fail(413, f"request body larger than {MAX_BODY} bytes")
                    return False
            elif name == b"transfer-encoding":
                # The end of a chunked body is found by h11 inside the bytes it is given, so
                # what a client pipelined behind it is not passed on: the connection ends here.
                self.remaining = None
                self.close_after = True
        self.request = event
        self.head_only = event.method == b"HEAD"
        self.head.clear()
        self.body.clear()
        return True

    def _dispatch(self) -> None:
        event = self.request
        assert event is not None
        self.server.requests += 1
        # The whole request is in: from now on the clock is the handler's, not the client's.
        self.deadline = float("inf")
        request = Request(
            event.method.decode("ascii", "replace"), event.target.decode("latin-1"), bytes(self.body)
        )
        try:
            result = self.server.router.route(request)
        except Exception:
            log.exception("handler failed", extra={"url.path": request.target})
            result = Response.error(500, "internal error")
        if isinstance(result, Response):
            self._respond(result)
            return
        self.busy = True
        # Nothing more is read meanwhile: a client pipelining a flood behind a slow request
        # must not grow h11's buffer without bound.
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.ensure_future(result)
        self.server.tasks.add(task)
        task.add_done_callback(self._async_done)

    def _async_done(self, task: asyncio.Future[Response]) -> None:
        self.server.tasks.discard(task)
        self.busy = False
        if self.transport is None:
            return
        self.transport.resume_reading()
        if task.cancelled():
            response = Response.error(503, "the manager is shutting down")
        elif task.exception() is not None:
            log.error("handler failed: %r", task.exception())
            response = Response.error(500, "internal error")
        else:
            response = task.result()
        self._respond(response)
        if self.transport is not None:
            self._next_events()

    def _respond(self, response: Response) -> None:
        h = self.h11
        content_type = (
            _JSON
            if response.content_type == "application/json"
            else (b"content-type", response.content_type.encode())
        )
        headers = [content_type, (b"content-length", str(len(response.body)).encode())]
        headers += response.headers
        if self.server.closing or self.close_after:
            headers.append(_CLOSE)
        try:
            out = h.send(
                h11.Response(
                    status_code=response.status, headers=headers, reason=_REASONS.get(response.status, b"")
                )
            )
            if not self.head_only:
                out = (out or b"") + (h.send(h11.Data(data=response.body)) or b"")
            out = (out or b"") + (h.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            h.send_failed()
            self._close()
            return
        assert self.transport is not None
        self.transport.write(out)
        if h.our_state is h11.MUST_CLOSE:
            self._close()
            return
        try:
            h.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        self.idle = True
        self.deadline = self.server.now + IDLE_TIMEOUT
        self.request = None
        self.head_only = False

    def _fail(self, status: int, reason: str) -> None:
        """Answer a bad request with a final error, then drain and close."""
        h = self.h11
        if h.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self.transport is not None:
            body = Response.error(status, reason).body
            try:
                out = (
                    h.send(
                        h11.Response(
                            status_code=status,
                            headers=[_JSON, (b"content-length", str(len(body)).encode()), _CLOSE],
                            reason=_REASONS.get(status, b""),
                        )
                    )
                    or b""
                )
                if not self.head_only:
                    out += h.send(h11.Data(data=body)) or b""
                out += h.send(h11.EndOfMessage()) or b""
                self.transport.write(out)
            except h11.LocalProtocolError:
                pass
        self._linger()

    def _linger(self) -> None:
        if self.transport is None:
            return
        self.lingering = True
        self.deadline = self.server.now + LINGER
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.server.connections.discard(self)

    def expire(self) -> None:
        """The deadline passed: drop a slow client, close an idle one, or end a linger."""
        if self.transport is not None:
            if self.idle or self.lingering:
                self.transport.close()
            else:
                self.server.timeouts += 1
                self.transport.abort()  # a slowloris gets no courtesy
            self.transport = None
        self.server.connections.discard(self)


class ApiServer:
    """Listens on PM_HTTP_HOST:PM_HTTP_PORT and serves the router's endpoints."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.config = manager.config.http
        self.router = Router(manager)
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Future[Response]] = set()
        self.closing = False
        self.now = 0.0
        self.requests = 0
        self.refused = 0
        self.timeouts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._certificates: CertificateWatcher | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        context: ssl.SSLContext | None = None
        if self.config.tls:
            self._certificates = self.manager.tls
            assert self._certificates is not None
            context = self._certificates.context
        self._server = await loop.create_server(
            lambda: Connection(self),
            sock=self.manager.listener,
            ssl=context,
            ssl_handshake_timeout=REQUEST_TIMEOUT if context else None,
            backlog=MAX_CONNECTIONS,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "API listening on %s://%s:%d",
            "https" if context else "http",
            self.config.host,
            self.port,
            extra={"server.address": self.config.host, "server.port": self.port},
        )
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        for conn in [c for c in self.connections if c.deadline <= self.now]:
            conn.expire()
        if self._certificates is not None:
            self._certificates.reload_if_changed()
        # The clock is read here, once a second, not per request: deadlines are coarse anyway.
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def close(self) -> None:
        """Stop accepting, close idle connections, give busy ones a moment, then cancel."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            if conn.idle and conn.transport is not None:
                conn._close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=SHUTDOWN_GRACE)
            for task in self.tasks:
                task.cancel()
        for conn in list(self.connections):
            conn.expire()
