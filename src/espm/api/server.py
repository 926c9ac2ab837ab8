"""The HTTP(S) server: asyncio protocol + h11, with the limits that keep hostile clients harmless.

Rules of this module:
- h11 owns HTTP/1.1 correctness (framing, keep-alive, pipelining); this module owns the bytes,
  the limits and the clock. Routes are plain functions elsewhere; nothing here knows a path.
- Every limit answers as early as it can: an oversized head gets 431 and an oversized body 413
  before the body is read; then the connection lingers a moment, draining, so that the client
  reads the answer instead of a reset.
- One timer for all connections: a sweep every second closes those past their deadline (a
  request not finished within REQUEST_TIMEOUT, or a keep-alive idle for IDLE_TIMEOUT).
- A new connection is always served: at the cap, the least recently active connection that is
  idle or still sending its request is closed to make room (a probe must not queue behind a
  flood), and under pressure such connections hold their place for a short time only.
- The server owns its accept loop. Out of descriptors (EMFILE), it sheds connections, accepts no
  more than the process can hold until the flood passes, and says so once per episode.
- A client is served as fast as it reads: while its answers wait in the transport (over the
  high-water mark), nothing more of its requests is read or parsed, and a pipelined batch yields
  the loop every PIPELINE_BATCH requests, so one client cannot hold the loop or grow the manager.
- TLS is done here, on an `ssl.SSLObject` with memory BIOs over the plain transport, not by
  asyncio's SSL transport: that one allocates and zeroes a 256 KiB buffer per connection from
  accept on, so a flood of 500 connections took the manager from 26 to 180 MiB, and the heap it
  fragmented stayed at 52 MiB after. Here a connection costs OpenSSL's few KiB, and the handshake
  is under the same deadlines and eviction as a request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import h11

from espm.api import framing
from espm.api.routes import Request, Response, Result
from espm.api.tls import CertificateWatcher
from espm.wire import message_bytes

log = logging.getLogger("espm.api")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
MAX_CONNECTIONS = 512
FD_RESERVE = 32  # descriptors kept for the manager's own work: state file, tool pipes, Elasticsearch
MIN_CONNECTIONS = 8
PRESSURE = 0.75  # of the cap: from there, idle and incomplete connections get the short limits
PRESSED_IDLE = 1.0
PRESSED_REQUEST = 2.0
ACCEPT_BATCH = 64  # accepts per wake-up, so a flood of connections cannot hog the loop
# Evictions per wake-up: an evicted connection's descriptor is freed at the loop's next turn, so
# this bounds how far past the cap the descriptors in use can go.
EVICT_BATCH = 4
EPISODE_QUIET = 10.0
BACKOFF = (0.05, 1.0)


# accept() errors that say the process or the system is out of something: waiting helps.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 5.0  # as uvicorn: probes and the ctl client do not reuse connections
LINGER = 0.5
SCAN_STEP = 4096
PIPELINE_BATCH = 32  # pipelined requests answered before the loop turns to the others
TLS_READ = 16 * 1024
SWEEP_INTERVAL = 1.0
SHUTDOWN_GRACE = 2.0
# Private, for the black-box tests of the time limits only (see Limits.from_environ).
TEST_LIMITS_VARIABLE = "_ESPM_TEST_API_LIMITS"

# The statuses espm answers with (http.HTTPStatus's phrases; importing `http` costs 256 KiB).
REASONS = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    413: b"Request Entity Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class Limits:
    """The server's limits and time limits: the module's constants unless told otherwise (tests)."""

    max_head: int = MAX_HEAD
    max_body: int = MAX_BODY
    max_connections: int = MAX_CONNECTIONS
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    linger: float = LINGER
    pressure: float = PRESSURE
    pressed_idle: float = PRESSED_IDLE
    pressed_request: float = PRESSED_REQUEST
    pipeline_batch: int = PIPELINE_BATCH
    sweep_interval: float = SWEEP_INTERVAL

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Limits:
        """The defaults, or as TEST_LIMITS_VARIABLE says ("request_timeout=1.5,sweep_interval=0.05").

        Private to the tests, not a setting: the black-box tests of the time limits run against a
        real socket in a second, not by waiting out 10 s and 5 s.
        """
        text = environ.get(TEST_LIMITS_VARIABLE, "").strip()
        if not text:
            return cls()
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, float] = {}
        for item in text.split(","):
            name, _, value = (part.strip() for part in item.partition("="))
            if name not in types:
                raise ValueError(f"{TEST_LIMITS_VARIABLE}: {name!r} is not one of {', '.join(types)}")
            try:
                values[name] = int(value) if types[name] == "int" else float(value)
            except ValueError:
                raise ValueError(f"{TEST_LIMITS_VARIABLE}: {name}={value!r} is not a number") from None
            if values[name] <= 0:
                raise ValueError(f"{TEST_LIMITS_VARIABLE}: {name}={value!r} is not positive")
        return cls(**values)  # type: ignore[arg-type]


class Connection(asyncio.Protocol):
    """One client connection: bytes in, h11 events, routed responses out."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.limits = limits = server.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Task[object] | None = None  # until the transport is made
        self.deadline = 0.0
        self.since = server.now  # when it entered its present state (idle or request)
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
        # TLS, when on: the handshake and the records go through these, bytes in, bytes out.
        self.tls: ssl.SSLObject | None = None
        self._tls_in: ssl.MemoryBIO | None = None
        self._tls_out: ssl.MemoryBIO | None = None
        self.handshaken = False
        self.write_paused = False  # the client does not read its answers as fast as they come
        self.served = 0  # requests answered in this turn of the loop

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self not in self.server.connections:  # evicted during its TLS handshake
            transport.abort()
            return
        self.transport = transport
        context = self.server.tls_context
        if context is None:
            self.deadline = self.server.now + self.limits.idle_timeout
            return
        # The handshake is a request like any other: under its deadline, evictable meanwhile.
        # OpenSSL's state is made at the first byte: a connection that sends none costs nothing.
        self.idle = False
        self.deadline = self.server.now + self.limits.request_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.pop(self, None)
        self.transport = None

    def handshake_done(self, task: asyncio.Task[object]) -> None:
        self.handshake = None
        if task.cancelled() or task.exception() is not None:
            # The transport could not be made (the socket died meanwhile): nothing to serve.
            self.server.connections.pop(self, None)

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.transport is None:
            return  # draining after a final answer
        if self.server.tls_context is not None:
            if self.tls is None:
                self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
                self.tls = self.server.tls_context.wrap_bio(self._tls_in, self._tls_out, server_side=True)
            data = self._decrypt(data)
            if self.transport is None:
                return
            if not data:
                if self.eof and not self.busy:
                    self._next_events()
                return
        if self.idle:
            self.idle = False
            self.since = self.server.now
            self.deadline = self.since + self.limits.request_timeout
        self.served = 0
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

    # -- TLS -------------------------------------------------------------------------------

    def _decrypt(self, data: bytes) -> bytes:
        """Records in, plaintext out; drives the handshake; b"" until there is plaintext."""
        assert self.tls is not None and self._tls_in is not None
        self._tls_in.write(data)
        plain: list[bytes] = []
        try:
            if not self.handshaken:
                self.tls.do_handshake()
                self.handshaken = True
                self.idle = True
                self.since = self.server.now
                self.deadline = self.since + self.limits.idle_timeout
            while True:
                plain.append(self.tls.read(TLS_READ))
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.eof = True  # the client's close_notify: its end of the stream
        except ssl.SSLError:
            # A failed handshake (no client certificate, no shared protocol) or a bad record:
            # OpenSSL's alert goes out, then the connection ends.
            self.server.tls_failures += 1
            self._flush_tls()
            self._close()
            return b""
        self._flush_tls()
        return b"".join(plain)

    def _flush_tls(self) -> None:
        assert self._tls_out is not None
        out = self._tls_out.read()
        if out and self.transport is not None:
            self.transport.write(out)

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        if self.tls is None:  # plain HTTP (with TLS on, nothing is sent before the handshake)
            self.transport.write(data)
            return
        self.tls.write(data)
        self._flush_tls()

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
            if len(self.head) + n > self.limits.max_head:
                self._fail(431, f"request line and headers larger than {self.limits.max_head} bytes")
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

    # -- flow control ------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def _wake(self) -> None:
        """Read and serve again, unless something still holds this connection back."""
        self.served = 0
        if self.transport is None or self.busy or self.write_paused or self.lingering:
            return
        self.transport.resume_reading()
        self._next_events()

    def _next_events(self) -> None:
        h = self.h11
        while self.transport is not None and not self.busy and not self.lingering and not self.write_paused:
            if self.served >= self.limits.pipeline_batch:
                # A long pipeline: the rest after the others had their turn.
                self.transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._wake)
                return
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
                if len(self.body) > self.limits.max_body:
                    self._fail(413, f"request body larger than {self.limits.max_body} bytes")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self.served += 1
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _accept_head(self, event: h11.Request) -> bool:
        # h11's own cap does not fire when a whole oversized head arrives in one read.
        size = len(event.method) + len(event.target) + 12
        for name, value in event.headers:
            size += len(name) + len(value) + 4
        if size > self.limits.max_head:
            self._fail(431, f"request line and headers larger than {self.limits.max_head} bytes")
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
                if self.remaining > self.limits.max_body:
                    self._fail(413, f"request body larger than {self.limits.max_body} bytes")
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
            result = self.server.route(request)
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
        if task.cancelled():
            response = Response.error(503, "the manager is shutting down")
        elif task.exception() is not None:
            log.error("handler failed: %r", task.exception())
            response = Response.error(500, "internal error")
        else:
            response = task.result()
        self._respond(response)
        self._wake()

    def _respond(self, response: Response) -> None:
        h = self.h11
        try:
            out = message_bytes(
                h,
                _head(response, self.server.closing or self.close_after),
                response.body,
                with_body=not self.head_only,
            )
        except h11.LocalProtocolError:
            h.send_failed()
            self._close()
            return
        self._send(out)
        if h.our_state is h11.MUST_CLOSE:
            self._close()
            return
        try:
            h.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        self.idle = True
        self.since = self.server.now
        self.deadline = self.since + self.limits.idle_timeout
        self.request = None
        self.head_only = False
        self.server.touch(self)

    def _fail(self, status: int, reason: str) -> None:
        """Answer a bad request with a final error, then drain and close."""
        h = self.h11
        if h.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self.transport is not None:
            response = Response.error(status, reason)
            try:
                self._send(
                    message_bytes(h, _head(response, True), response.body, with_body=not self.head_only)
                )
            except h11.LocalProtocolError:
                pass
        self._linger()

    def _linger(self) -> None:
        if self.transport is None:
            return
        self.lingering = True
        self.deadline = self.server.now + self.limits.linger
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.server.connections.pop(self, None)

    @property
    def evictable(self) -> bool:
        """Idle, lingering, or still sending its request: nothing of the manager's is at stake."""
        return not self.busy

    def evict(self) -> None:
        """Close now to make room: the descriptor is freed at the loop's next turn."""
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        elif self.handshake is not None:
            self.handshake.cancel()
        self.server.connections.pop(self, None)

    def expire(self) -> None:
        """The deadline passed: drop a slow client, close an idle one, or end a linger."""
        if self.transport is not None:
            if self.idle or self.lingering:
                self.transport.close()
            else:
                self.server.timeouts += 1
                self.transport.abort()  # a slowloris gets no courtesy
            self.transport = None
        elif self.handshake is not None:
            self.server.timeouts += 1
            self.handshake.cancel()
        self.server.connections.pop(self, None)


def _head(response: Response, close: bool) -> h11.Response:
    """The head of an answer: its type, its length, its own headers, and `connection: close`."""
    content_type = (
        _JSON
        if response.content_type == "application/json"
        else (b"content-type", response.content_type.encode())
    )
    headers = [content_type, (b"content-length", str(len(response.body)).encode()), *response.headers]
    if close:
        headers.append(_CLOSE)
    return h11.Response(
        status_code=response.status, headers=headers, reason=REASONS.get(response.status, b"")
    )


def connection_cap(limit: int = MAX_CONNECTIONS) -> int:
    """The connections the process can hold beside its own work, given RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(MIN_CONNECTIONS, min(limit, soft - FD_RESERVE))


class ApiServer:
    """Serves, on the listener it is given, what `route` answers (routes.py's `Router.route`)."""

    def __init__(
        self,
        route: Callable[[Request], Result],
        host: str,
        tls: CertificateWatcher | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.route = route
        self.host = host  # as configured, for the log
        self.limits = limits = limits or Limits.from_environ(os.environ)
        # Least recently active first: a connection moves to the end when it is admitted and
        # each time it is answered, so the front is where eviction looks.
        self.connections: dict[Connection, None] = {}
        self.tasks: set[asyncio.Future[Response]] = set()
        self.closing = False
        self.now = 0.0
        self.requests = 0
        self.refused = 0
        self.evicted = 0
        self.timeouts = 0
        self.accept_failures = 0
        self.port = 0
        self.cap = connection_cap(limits.max_connections)
        self.capacity = self.cap  # lowered while descriptors run out
        self._listener: socket.socket | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.tls_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._backoff = BACKOFF[0]
        self._exhausted_at: float | None = None  # the last accept that ran out, in an episode
        self._episode = (0, 0)  # accept failures and evictions when the episode began
        self._sweeper: asyncio.TimerHandle | None = None
        self._certificates = tls

    async def start(self, listener: socket.socket) -> None:
        """Serve on `listener`, a listening socket opened beforehand (listener.py)."""
        loop = self._loop = asyncio.get_running_loop()
        self.now = loop.time()
        if self._certificates is not None:
            self.tls_context = self._certificates.context
        self._listener = listener
        self.port = listener.getsockname()[1]
        loop.add_reader(self._listener.fileno(), self._accept)
        log.info(
            "API listening on %s://%s:%d",
            "https" if self.tls_context else "http",
            self.host,
            self.port,
            extra={"server.address": self.host, "server.port": self.port},
        )
        self._sweeper = loop.call_later(self.limits.sweep_interval, self._sweep)

    def counters(self) -> dict[str, int]:
        """The server's counters, by their /debug/vars names."""
        return {
            "http_requests": self.requests,
            "http_connections_refused": self.refused,
            "http_timeouts": self.timeouts,
            "http_connections_evicted": self.evicted,
            "http_accept_failures": self.accept_failures,
            "http_connections_open": len(self.connections),
            "http_tls_failures": self.tls_failures,
        }

    # -- accepting ---------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._loop is not None and self._listener is not None
        self.now = self._loop.time()
        evictions = 0
        for _ in range(ACCEPT_BATCH):
            if evictions >= EVICT_BATCH:
                return  # the rest at the next turn, once the evicted ones' descriptors are free
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing left to accept, or the client gave up before we got to it
            except OSError as err:
                self._accept_failed(err)
                return
            evictions += self._admit(sock)

    def _admit(self, sock: socket.socket) -> int:
        """Serve a new connection, making room if needed; how many connections it evicted."""
        assert self._loop is not None
        evicted = 0
        if len(self.connections) >= self.capacity:
            victim = self._least_active()
            if victim is None:
                # Every place holds a request the manager is answering: those come first.
                self.refused += 1
                sock.close()
                return 0
            victim.evict()
            self.evicted += 1
            evicted = 1
        conn = Connection(self)
        self.connections[conn] = None
        conn.deadline = self.now + self.limits.request_timeout
        task = self._loop.create_task(self._loop.connect_accepted_socket(lambda: conn, sock))
        conn.handshake = task
        task.add_done_callback(conn.handshake_done)
        return evicted

    def _least_active(self) -> Connection | None:
        for conn in self.connections:
            if conn.evictable:
                return conn
        return None

    def touch(self, conn: Connection) -> None:
        if conn in self.connections:
            del self.connections[conn]
            self.connections[conn] = None

    def _accept_failed(self, err: OSError) -> None:
        """accept() failed for want of descriptors (or worse): shed, lower the cap, back off."""
        assert self._loop is not None and self._listener is not None
        self.accept_failures += 1
        if self._exhausted_at is None:
            self._episode = (self.accept_failures - 1, self.evicted)
            log.warning(
                "cannot accept connections (%s) with %d open: closing the least active ones and "
                "accepting no more than that until the flood passes (said once per episode)",
                err.strerror or err,
                len(self.connections),
                extra={"error.code": errno.errorcode.get(err.errno or 0, str(err.errno))},
            )
            if err.errno in OUT_OF_RESOURCES:
                # The ceiling is where we are, less a margin for the manager's own descriptors.
                self.capacity = max(1, min(self.capacity, len(self.connections) - FD_RESERVE // 4))
        self._exhausted_at = self.now
        if err.errno in OUT_OF_RESOURCES:
            shed = 0
            while shed < EVICT_BATCH and (victim := self._least_active()):
                victim.evict()
                self.evicted += 1
                shed += 1
                if len(self.connections) <= self.capacity:
                    break
            if shed:
                return  # the descriptors are freed at the next turn, and accepting goes on then
        # Nothing to shed, or an error waiting may cure: stop watching the socket for a while,
        # since a listening socket with a pending connection stays readable and would spin.
        self._loop.remove_reader(self._listener.fileno())
        self._paused = self._loop.call_later(self._backoff, self._resume)
        self._backoff = min(self._backoff * 2, BACKOFF[1])

    def _resume(self) -> None:
        self._paused = None
        if not self.closing and self._loop is not None and self._listener is not None:
            self._loop.add_reader(self._listener.fileno(), self._accept)

    def _end_episode(self) -> None:
        failures, evicted = self._episode
        log.info(
            "accepting connections normally again: %d accepts failed, %d connections closed to make room",
            self.accept_failures - failures,
            self.evicted - evicted,
        )
        self._exhausted_at = None
        self.capacity = self.cap
        self._backoff = BACKOFF[0]

    # -- time ------------------------------------------------------------------------------

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self.sweep(loop.time())
        if self._certificates is not None:
            self._certificates.reload_if_changed()
        # The clock is read here, once a second, not per request: deadlines are coarse anyway.
        self._sweeper = loop.call_later(self.limits.sweep_interval, self._sweep)

    def sweep(self, now: float) -> None:
        """Close the connections past their deadline at `now` (the loop's clock, or a test's)."""
        self.now = now
        limits = self.limits
        pressed = len(self.connections) >= self.capacity * limits.pressure
        for conn in list(self.connections):
            deadline = conn.deadline
            if pressed and conn.evictable and not conn.lingering:
                short = limits.pressed_idle if conn.idle else limits.pressed_request
                deadline = min(deadline, conn.since + short)
            if deadline <= now:
                conn.expire()
        if (
            self._exhausted_at is not None
            and now - self._exhausted_at >= EPISODE_QUIET
            and len(self.connections) < max(1, self.capacity // 2)
        ):
            self._end_episode()

    async def close(self) -> None:
        """Stop accepting, close idle connections, give busy ones a moment, then cancel."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is None or self._loop is None:
            return
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        for conn in list(self.connections):
            if conn.idle and conn.transport is not None:
                conn._close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=SHUTDOWN_GRACE)
            for task in self.tasks:
                task.cancel()
        for conn in list(self.connections):
            conn.expire()
