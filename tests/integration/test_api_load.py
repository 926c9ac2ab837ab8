"""The API under hostile and concurrent load: slow clients, racing operators, generated requests."""

from __future__ import annotations

import random
import socket
import string
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import base_env, descendants, fixture, free_port, proc_state, wait_for


def test_300_slow_clients_do_not_delay_health_or_signals(espm) -> None:
    m = espm(["python3", fixture("sigrecorder.py")])
    assert m.readline() == "child ready"
    m.wait_api()
    slow = []
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
            # Each sends a part of a request and then nothing (a slowloris).
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow-%d: " % i)
            slow.append(s)
        for _ in range(5):
            started = time.monotonic()
            assert m.request("GET", "/health", timeout=1)[0] == 200
            assert time.monotonic() - started < 1.0
        started = time.monotonic()
        m.signal(__import__("signal").SIGUSR2)
        assert m.readline(timeout=1) == "child SIGUSR2"
        assert time.monotonic() - started < 0.5
    finally:
        for s in slow:
            s.close()


def test_12_operators_racing_never_leave_two_processes_or_a_wrong_status(espm) -> None:
    m = espm(["sh", "-c", "exec sleep 600"])
    m.wait_api()
    manager = m.pid
    stop = time.monotonic() + 1.5
    problems: list[str] = []

    def operator(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            action = rng.choice(["start", "stop", "kill", "start"])
            try:
                code, doc, _ = m.request("POST", f"/es/{action}", timeout=5)
            except OSError as err:
                problems.append(f"{action}: {err}")
                return
            if code >= 500 and not (action == "start" and doc.get("state") in ("stopping", "killing")):
                problems.append(f"{action} answered {code}: {doc}")
            sleepers = [p for p in descendants(manager) if proc_state(p) not in (None, "Z")]
            if len(sleepers) > 1:
                problems.append(f"two processes at once: {sleepers}")

    threads = [threading.Thread(target=operator, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:5]

    # Once things settle, the status says what /proc says.
    def settled() -> bool:
        doc = m.status()
        return doc["state"] not in ("stopping", "killing")

    wait_for(settled)
    doc = m.status()
    alive = [p for p in descendants(manager) if proc_state(p) not in (None, "Z")]
    if doc["state"] == "started":
        assert alive == [doc["pid"]]
    else:
        assert doc["state"] in ("stopped", "killed") and doc["pid"] is None and alive == []
    assert m.proc.poll() is None


TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-_.~%/?=&", min_size=0, max_size=40)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/health",
            "/es/start",
            "/es/stop",
            "/es/kill",
            "/es/status",
            "/es/ready",
            "/keystore/status",
            "/openapi.json",
            "/debug/vars",
            "/metrics",
            "/debug/pprof/heap",
        ]
    ),
    TOKEN.map(lambda t: "/" + t),
    st.sampled_from(["/es/status"]).flatmap(lambda p: TOKEN.map(lambda q: p + "?" + q)),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "FOO"])
HEADER_NAME = st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=20)
HEADER_VALUE = st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=60)
# The 5xx codes the spec lists: a failed start/stop/kill, an unhealthy process, readiness.
ALLOWED_5XX = {("/es/start", 500), ("/es/stop", 500), ("/es/kill", 500), ("/health", 500), ("/es/ready", 503)}


def test_generated_requests_find_no_unlisted_5xx(espm) -> None:
    m = espm(["sleep", "600"], env=base_env(PM_HTTP_PORT=str(free_port()), PM_EXP_VARS="1", PM_METRICS="1"))
    m.wait_api()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        method=METHODS,
        path=PATHS,
        headers=st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=5),
        body=st.binary(max_size=300),
    )
    def check(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: espm\r\nConnection: close\r\n"
        for name, value in headers:
            if name.lower() in ("content-length", "transfer-encoding", "host", "connection"):
                continue
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", m.port), timeout=5) as s:
            s.sendall(head.encode("latin-1") + body)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        if not answer:
            return  # a connection closed on garbage is an acceptable answer
        status = int(answer.split(b" ", 2)[1])
        if status >= 500:
            assert (path.split("?")[0], status) in ALLOWED_5XX, (method, path, answer[:300])

    try:
        check()
    finally:
        # Whatever was thrown at it, the manager still serves and still runs its process.
        assert m.request("GET", "/health")[0] == 200
        assert m.proc.poll() is None
