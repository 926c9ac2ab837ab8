"""Request framing over a real socket: every ambiguity is refused and the connection closed.

A request whose end is ambiguous (RFC 9112 §6.1, §5.2, §2.2) is where request smuggling hides: a
`POST /es/stop` written as the "body" of a harmless request must never run, so each case sends one
behind the faulty head and then checks that the child still runs, with the same pid.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

SMUGGLED = b"POST /es/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def exchange(port: int, data: bytes, timeout: float = 3) -> tuple[bytes, bool]:
    """Send raw bytes; return what came back and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    return b"".join(chunks), True
                chunks.append(chunk)
        except ConnectionResetError:
            return b"".join(chunks), True
        except TimeoutError:
            pass
    return b"".join(chunks), False


@pytest.fixture(scope="module")
def api(request):
    # One manager for the module: each case checks that it survived the previous ones.
    from tests.conftest import Espm, base_env, free_port

    m = Espm(["sleep", "600"], base_env(PM_HTTP_PORT=str(free_port())))
    request.addfinalizer(m.close)
    m.wait_api()
    return m


CASES = {
    # Both framings: h11 alone would read it as chunked ("0" ends the body) and then run the stop.
    "content-length and chunked": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" % (5 + len(SMUGGLED)) + SMUGGLED,
        400,
    ),
    "chunked and content-length": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        400,
    ),
    "two equal content-lengths": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "a content-length list": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n" + SMUGGLED,
        400,
    ),
    "two different content-lengths": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
        + SMUGGLED,
        400,
    ),
    "obsolete line folding": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n Transfer-Encoding: chunked\r\n\r\n" + SMUGGLED,
        400,
    ),
    "folding with a tab": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n\tb\r\n\r\n" + SMUGGLED, 400),
    "whitespace before the first header": (b"GET /health HTTP/1.1\r\n Host: x\r\n\r\n" + SMUGGLED, 400),
    "bare LF everywhere": (b"GET /health HTTP/1.1\nHost: x\n\n" + SMUGGLED.replace(b"\r\n", b"\n"), 400),
    "one bare LF": (b"GET /health HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n" + SMUGGLED, 400),
    "bare LF ending the head": (b"GET /health HTTP/1.1\r\nHost: x\r\n\n" + SMUGGLED, 400),
    "gzip then chunked": (
        b"POST /es/start HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        501,
    ),
    "identity": (b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n" + SMUGGLED, 501),
    "two transfer-encodings": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        501,
    ),
    "chunked in HTTP/1.0": (
        b"GET /health HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        400,
    ),
    "HTTP/9.9": (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n" + SMUGGLED, 505),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_ambiguous_frame_is_refused_closed_and_nothing_behind_it_runs(api, case) -> None:
    before = api.status()
    data, status = CASES[case]
    out, closed = exchange(api.port, data)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    assert out.count(b"HTTP/1.1 ") == 1, out  # one answer: the hidden stop got none
    assert b"connection: close" in out.lower()
    assert closed, "the connection must be closed after a framing error"
    after = api.status()
    assert after["state"] == "started" and after["pid"] == before["pid"]
    os.kill(before["pid"], 0)  # the child still runs


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_faults_split_across_reads_are_seen(api, split) -> None:
    """A bare LF or a fold is caught whichever way the bytes are cut."""
    pid = api.status()["pid"]
    for data in (CASES["one bare LF"][0], CASES["obsolete line folding"][0]):
        with socket.create_connection(("127.0.0.1", api.port), timeout=3) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            out = b""
            try:
                for i in range(0, len(data), split):
                    s.sendall(data[i : i + split])
                    if i % 8 == 0:
                        time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except ConnectionResetError:
                pass
        assert out.startswith(b"HTTP/1.1 400 "), out[:200]
        assert out.count(b"HTTP/1.1 ") == 1
    assert api.status()["pid"] == pid


def test_a_chunked_body_is_read_and_the_connection_then_ends(api) -> None:
    """A well-formed chunked request is served; its connection closes after the answer."""
    data = (
        b"POST /es/start HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    out, closed = exchange(api.port, data)
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 ") == 1
    assert b"connection: close" in out.lower() and closed


def test_well_formed_keep_alive_still_pipelines(api) -> None:
    data = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" * 3 + (
        b"GET /es/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    out, closed = exchange(api.port, data)
    assert out.count(b"HTTP/1.1 200 OK") == 4 and closed


def _faulty(method: str, path: str) -> dict[int, bytes]:
    """One request per protocol error, each aimed at method and path."""
    line = f"{method} {path} HTTP/1.1\r\n".encode()
    return {
        400: line + b"Host: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        413: line + b"Host: x\r\nContent-Length: 2000000\r\n\r\n",
        431: line + b"Host: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        501: line + b"Host: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        505: line.replace(b"HTTP/1.1", b"HTTP/2.0") + b"Host: x\r\n\r\n",
    }


def test_every_protocol_error_is_documented_on_every_operation(api) -> None:
    import json
    from pathlib import Path

    doc = json.loads((Path(__file__).resolve().parents[2] / "src" / "espm" / "openapi.json").read_text())
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, data in _faulty(method.upper(), path.replace("{name}", "es")).items():
                out, closed = exchange(api.port, data)
                assert out.startswith(b"HTTP/1.1 %d " % status), (method, path, out[:100])
                assert closed
                assert str(status) in operation["responses"], f"{method} {path} answered {status}"
                documented = operation["responses"][str(status)]
                if "$ref" in documented:
                    documented = doc["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
                assert "application/json" in documented["content"]
