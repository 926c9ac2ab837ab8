"""The API's connection protocol on a fake transport and a virtual clock (as h11 and uvicorn test).

Time limits are parameters: a slowloris, an idle keep-alive and the short limits under pressure
are checked in milliseconds of a clock the test moves, not by waiting out 10 s and 5 s.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from espm.api.routes import Request, Response
from espm.api.server import ApiServer, Connection, Limits

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes and how it ends."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.ended: str | None = None  # "closed" (FIN) or "aborted" (RST)
        self.reading = True
        self.eof_written = False

    def write(self, data: Any) -> None:
        self.out += data

    def close(self) -> None:
        self.ended = self.ended or "closed"

    def abort(self) -> None:
        self.ended = self.ended or "aborted"

    def is_closing(self) -> bool:
        return self.ended is not None

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def answers(self) -> int:
        return bytes(self.out).count(b"HTTP/1.1 ")


class Router:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def route(self, request: Request) -> Response:
        self.seen.append(request.target)
        return Response(200, b'{"status": "ok"}')


MS = 0.001
LIMITS = Limits(request_timeout=10 * MS, idle_timeout=5 * MS, pressed_idle=1 * MS, pressed_request=2 * MS)


def make_server(limits: Limits = LIMITS) -> ApiServer:
    server = ApiServer(Router().route, "127.0.0.1", limits=limits)
    server.now = 1000.0
    return server


def connect(server: ApiServer) -> tuple[Connection, FakeTransport]:
    """What accepting does: a place in the table, then the transport."""
    conn = Connection(server)
    server.connections[conn] = None
    conn.deadline = server.now + server.limits.request_timeout
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def test_a_slowloris_is_aborted_at_its_deadline() -> None:
    server = make_server()
    conn, t = connect(server)
    conn.data_received(b"GET /health HTTP/1.1\r\nHo")
    server.sweep(server.now + 9.9 * MS)
    assert t.ended is None
    server.sweep(server.now + 0.2 * MS)
    assert t.ended == "aborted" and server.timeouts == 1 and conn not in server.connections


def test_the_request_deadline_runs_from_the_first_byte_and_is_not_extended_by_more() -> None:
    server = make_server()
    conn, t = connect(server)
    conn.data_received(b"G")
    for _ in range(9):
        server.sweep(server.now + 1 * MS)
        conn.data_received(b"E")  # a byte a millisecond: each read is quick, the request is not
    assert t.ended is None
    server.sweep(server.now + 1.1 * MS)
    assert t.ended == "aborted"


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_time() -> None:
    server = make_server()
    conn, t = connect(server)
    conn.data_received(HEALTH)
    assert t.answers() == 1 and t.ended is None
    server.sweep(server.now + 4.9 * MS)
    assert t.ended is None
    server.sweep(server.now + 0.2 * MS)
    assert t.ended == "closed" and server.timeouts == 0  # a courteous close, not a timeout


def test_under_pressure_idle_and_incomplete_connections_get_the_short_limits() -> None:
    server = make_server(Limits(**{**LIMITS.__dict__, "max_connections": 8}))
    server.capacity = 8
    idle = [connect(server) for _ in range(4)]
    slow = [connect(server) for _ in range(2)]
    for conn, _ in slow:
        conn.data_received(b"GET / HTTP/1.1\r\n")
    assert len(server.connections) >= 8 * server.limits.pressure
    server.sweep(server.now + 1.1 * MS)
    assert all(t.ended == "closed" for _, t in idle)
    assert all(t.ended is None for _, t in slow)
    # Fewer than 3/4 of the cap are left: the usual 10 ms of a request again.
    server.sweep(server.now + 1 * MS)
    assert all(t.ended is None for _, t in slow)
    server.sweep(server.now + 8 * MS)
    assert all(t.ended == "aborted" for _, t in slow)


def test_the_least_recently_answered_connection_is_the_first_evicted() -> None:
    server = make_server()
    (a, _), (b, _), (c, _) = (connect(server) for _ in range(3))
    a.data_received(HEALTH)  # a was answered last: it moves to the end
    assert server._least_active() is b
    b.busy = True  # a request the manager is answering is never evicted
    assert server._least_active() is c


def test_a_pipeline_yields_the_loop_every_batch() -> None:
    async def run() -> tuple[int, int]:
        server = make_server(Limits(**{**LIMITS.__dict__, "pipeline_batch": 5}))
        conn, t = connect(server)
        conn.data_received(HEALTH * 12)
        first = t.answers()
        for _ in range(3):
            await asyncio.sleep(0)
        return first, t.answers()

    first, later = asyncio.run(run())
    assert (first, later) == (5, 12)


def test_a_client_that_does_not_read_is_not_read_from() -> None:
    server = make_server()
    conn, t = connect(server)
    conn.pause_writing()  # the transport's buffer is over its high-water mark
    assert not t.reading
    conn.data_received(HEALTH * 3)  # already on its way when reading was paused
    assert t.answers() == 0
    conn.resume_writing()
    assert t.reading and t.answers() == 3


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx" + HEALTH, 400),
        (b"GET / HTTP/1.1\nHost: x\n\n" + HEALTH, 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + HEALTH, 501),
    ],
)
def test_after_a_framing_error_nothing_more_is_parsed_and_the_connection_lingers(
    data: bytes, status: int
) -> None:
    server = make_server()
    conn, t = connect(server)
    conn.data_received(data)
    assert t.out.startswith(b"HTTP/1.1 %d " % status) and t.answers() == 1
    assert t.eof_written and conn.lingering
    conn.data_received(HEALTH)  # drained, never answered
    assert t.answers() == 1
    server.sweep(server.now + LIMITS.linger + 1 * MS)
    assert t.ended == "closed"
