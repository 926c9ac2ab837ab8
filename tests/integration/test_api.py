"""The HTTP API over real sockets: routes and codes, keep-alive, limits, debug endpoints."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import base_env, free_port

ROOT = Path(__file__).resolve().parents[2]


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _untouched(manager) -> bool:
    try:
        return manager.status()["state"] == "started"
    except OSError:
        return False


@pytest.fixture(scope="module")
def shared() -> list:
    """The manager this module's asking tests share; a new one replaces it after a test broke it."""
    return []


@pytest.fixture
def api(module_espm, shared):
    """One manager serves the tests that only ask (a start costs it about 0.1 s of CPU, 39 times
    over). Each test must leave it as it found it, and fails here if it does not; the next test
    then gets a new one, so that only the guilty test fails."""
    if not shared or not _untouched(shared[-1]):
        shared.append(module_espm(["sleep", "600"]))
        shared[-1].wait_api()
    manager = shared[-1]
    pid = manager.status()["pid"]
    yield manager
    doc = manager.status()
    assert doc["state"] == "started" and doc["pid"] == pid, doc


def test_health_and_status_are_json(api) -> None:
    code, doc, answer = api.request("GET", "/health")
    assert code == 200 and doc == {"status": "ok"}
    assert answer.getheader("Content-Type") == "application/json"
    code, doc, _ = api.request("GET", "/es/status")
    assert code == 200 and doc["state"] == "started"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
@pytest.mark.parametrize("action", ["start", "stop", "kill"])
def test_a_wrong_method_never_acts(api, method, action) -> None:
    pid = api.status()["pid"]
    code, doc, answer = api.request(method, f"/es/{action}")
    assert code == 405
    assert answer.getheader("Allow") == "POST"
    if method != "HEAD":
        assert "error" in doc
    assert api.status()["pid"] == pid and api.status()["state"] == "started"


def test_wrong_method_on_a_read_route(api) -> None:
    code, doc, answer = api.request("POST", "/health")
    assert code == 405 and answer.getheader("Allow") == "GET" and "error" in doc


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/es",
        "/es/",
        "/es/restart",
        "/other/status",
        "/debug/vars",
        "/metrics",
        "/debug/pprof/",
        "/es/status/extra",
        "/ES/status",
    ],
)
def test_unknown_paths_and_disabled_endpoints_are_404(api, path) -> None:
    code, doc, _ = api.request("GET", path)
    assert code == 404 and "error" in doc


def test_keystore_status_is_404_when_the_updater_is_off(api) -> None:
    code, doc, _ = api.request("GET", "/keystore/status")
    assert code == 404 and "PM_KEYSTORE_UPDATER=false" in doc["error"]


def test_query_strings_are_ignored_by_routing(api) -> None:
    assert api.request("GET", "/es/status?pretty=true")[0] == 200


def test_keep_alive_and_pipelining(api) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    for _ in range(5):
        conn.request("GET", "/health")
        answer = conn.getresponse()
        assert answer.status == 200 and answer.read() == b'{"status": "ok"}'
    conn.close()
    pipelined = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3
        + b"GET /es/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    out = raw(api.port, pipelined)
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert out.rstrip().endswith(b"}")


def test_oversized_head_gets_431_and_the_server_keeps_serving(api) -> None:
    out = raw(api.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    # Arriving in small pieces, the same head is refused the same way.
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for _ in range(40):
            s.sendall(b"X-Many: " + b"b" * 500 + b"\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert api.request("GET", "/health")[0] == 200


def test_oversized_body_gets_413_before_the_body_is_sent(api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        s.sendall(b"POST /es/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert api.status()["state"] == "started"  # the stop was never acted on
    # A chunked body that grows past the cap is cut off too.
    body = b"".join(b"%x\r\n%s\r\n" % (60000, b"z" * 60000) for _ in range(20))
    out = raw(api.port, b"POST /es/stop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert out.startswith(b"HTTP/1.1 413 ")
    assert api.status()["state"] == "started"


@pytest.mark.parametrize(
    ("garbage", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100), 400),
        (b"HELLO\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 505),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"\r\n\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    ],
)
def test_garbage_gets_its_error_and_a_closed_connection(api, garbage, status) -> None:
    # One answer each, pinned: the status that names the fault, `Connection: close`, and the close
    # itself (an EOF within the linger time, not a connection left open for the idle timeout).
    with socket.create_connection(("127.0.0.1", api.port), timeout=2) as s:
        s.sendall(garbage)
        out = b""
        while chunk := s.recv(65536):  # a TimeoutError here: the connection was kept open
            out += chunk
    assert out.startswith(b"HTTP/1.1 %d " % status), out
    assert b"connection: close" in out.split(b"\r\n\r\n", 1)[0].lower()
    assert api.request("GET", "/health")[0] == 200


def test_openapi_document_is_served_and_matches_the_repository(api) -> None:
    code, doc, _ = api.request("GET", "/openapi.json")
    assert code == 200
    assert doc == json.loads((ROOT / "src" / "espm" / "openapi.json").read_text())


def test_every_documented_route_answers_a_documented_status(espm) -> None:
    doc = json.loads((ROOT / "src" / "espm" / "openapi.json").read_text())
    for switches in ({}, {"PM_EXP_VARS": "1", "PM_METRICS": "1", "PM_PROFILER": "1"}):
        m = espm(["sleep", "60"], env=base_env(PM_HTTP_PORT=str(free_port()), **switches))
        m.wait_api()
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                target = path.replace("{name}", "es").replace("profile", "profile?seconds=0.1")
                code, _, answer = m.request(method.upper(), target)
                assert str(code) in operation["responses"], f"{method} {path} answered {code}"
                documented = operation["responses"][str(code)].get("content", {})
                assert answer.getheader("Content-Type").split(";")[0] in documented


def test_debug_vars(espm) -> None:
    m = espm(["sleep", "60"], env=base_env(PM_HTTP_PORT=str(free_port()), PM_EXP_VARS="true"))
    m.wait_api()
    for _ in range(3):
        m.request("GET", "/health")
    code, doc, _ = m.request("GET", "/debug/vars")
    assert code == 200
    assert (
        doc["memory"]["rss_bytes"] > 1_000_000
        and doc["memory"]["peak_rss_bytes"] >= doc["memory"]["rss_bytes"]
    )
    assert doc["process"]["state"] == "started" and doc["counters"]["http_requests"] >= 4
    assert doc["uptime_seconds"] > 0 and "espm" in " ".join(doc["cmdline"])
    # What the soak counts leaks by: one more connection held open is one more descriptor.
    assert doc["runtime"]["threads"] >= 1 and doc["runtime"]["asyncio_tasks"] >= 1

    def fds() -> int:
        return int(m.request("GET", "/debug/vars")[1]["runtime"]["open_fds"])

    time.sleep(0.3)  # the earlier connections' ends reached espm
    before = fds()
    with socket.create_connection(("127.0.0.1", m.port)) as held:
        held.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        held.recv(4096)
        deadline = time.monotonic() + 2
        while fds() != before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fds() == before + 1
    assert set(doc["counters"]) >= {
        "signals_forwarded",
        "zombies_reaped",
        "http_requests",
        "keystore_updates",
        "keystore_reloads",
    }


def test_metrics_in_prometheus_text_format(espm) -> None:
    m = espm(["sleep", "60"], env=base_env(PM_HTTP_PORT=str(free_port()), PM_METRICS="on"))
    m.wait_api()
    code, body, answer = m.request("GET", "/metrics")
    assert code == 200 and answer.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'espm_process_state{name="es",state="started"} 1' in text
    assert 'espm_process_up{name="es"} 1' in text
    assert "# TYPE espm_signals_forwarded_total counter" in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2


def test_pprof_endpoints(espm) -> None:
    m = espm(["sleep", "60"], env=base_env(PM_HTTP_PORT=str(free_port()), PM_PROFILER="yes"))
    m.wait_api()
    code, doc, _ = m.request("GET", "/debug/pprof/")
    assert code == 200 and set(doc["profiles"]) == {"profile", "heap", "tasks"}
    code, body, _ = m.request("GET", "/debug/pprof/heap")
    assert code == 200 and b"traced:" in body
    code, body, _ = m.request("GET", "/debug/pprof/tasks")
    assert code == 200 and b"task " in body and b"thread " in body
    started = time.monotonic()
    code, body, _ = m.request("GET", "/debug/pprof/profile?seconds=0.5")
    assert code == 200 and b"function calls" in body and time.monotonic() - started >= 0.45
    assert m.request("GET", "/debug/pprof/profile?seconds=abc")[0] == 400
    assert m.request("GET", "/debug/pprof/profile?seconds=3600")[0] == 400
    assert m.request("GET", "/debug/pprof/nothing")[0] == 404


def test_a_slow_client_is_dropped_and_an_idle_keep_alive_closed_by_the_running_server(espm) -> None:
    # The time limits' rules are checked on a virtual clock (tests/unit/test_server_protocol.py)
    # and their defaults in tests/unit/test_limits.py; this checks the real sweep on real sockets,
    # with short limits so that both are over in 2 s rather than 10 s and 5 s.
    limits = "request_timeout=2,idle_timeout=0.4,sweep_interval=0.05"
    m = espm(["sleep", "60"], env=base_env(PM_HTTP_PORT=str(free_port()), _ESPM_TEST_API_LIMITS=limits))
    m.wait_api()
    slow = socket.create_connection(("127.0.0.1", m.port), timeout=20)
    idle = socket.create_connection(("127.0.0.1", m.port), timeout=20)
    # Each clock starts before the bytes go: the server's own starts after they arrive.
    idle_started = time.monotonic()
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
    slow_started = time.monotonic()
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its request
    assert idle.recv(100) == b""  # nothing more asked: closed as idle, before the request deadline
    idle_for = time.monotonic() - idle_started
    assert slow.recv(100) == b""  # closed by the server
    slow_for = time.monotonic() - slow_started
    assert 0.4 <= idle_for < 1.2 and 2 <= slow_for <= 5, (idle_for, slow_for)
    slow.close()
    idle.close()
    assert m.request("GET", "/health")[0] == 200
