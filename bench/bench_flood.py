"""flood: /health latency on a new connection while 1,000 connections flood the API.

espm runs `sleep 600`. A prober opens a new connection for each `GET /health` (as a kubelet
does), PROBES times, PROBE_GAP apart, with a PROBE_TIMEOUT (a kubelet's default is 1 s); a
probe that fails or times out counts as failed. The anchor is the same probe on the same
manager with no flood, measured first in the same run. Then, each for FLOOD_SECONDS:

- idle: 1,000 connections opened and held, sending nothing;
- slowloris: 1,000 connections, each sending an unfinished request head a byte at a time;
- churn: 1,000 connections kept open: whenever the server closes one, a new one replaces it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

from harness import (
    BenchError,
    Context,
    Result,
    Row,
    espm_env,
    free_port,
    kill_tree,
    listening,
    manager_argv,
    spawn,
    summary,
    wait_for,
)

NAME = "flood"
FLOOD = 1000
PROBES = 200
PROBE_GAP = 0.01
PROBE_TIMEOUT = 1.0
P99_LIMIT_MS = 250.0  # a quarter of a kubelet probe's default timeout (1 s)
HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "


class Flood(threading.Thread):
    """Holds `count` connections to `port` in one thread until stopped."""

    def __init__(self, port: int, count: int, mode: str) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.mode = port, count, mode
        self.stopping = threading.Event()
        self.opened = 0
        self.selector = selectors.DefaultSelector()

    def _open(self) -> None:
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", self.port))
        self.selector.register(s, selectors.EVENT_READ)
        self.opened += 1

    def run(self) -> None:
        for _ in range(self.count):
            self._open()
        trickle = 0
        while not self.stopping.is_set():
            for key, _ in self.selector.select(0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:  # closed by the server
                    self.selector.unregister(s)
                    s.close()
                    if self.mode == "churn":
                        self._open()
            if self.mode == "slowloris":
                # One more byte of the head on every connection, about every 0.5 s.
                trickle += 1
                if trickle % 10 == 0:
                    for key in list(self.selector.get_map().values()):
                        with contextlib.suppress(OSError):
                            key.fileobj.send(b"a")  # type: ignore[union-attr]
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


def _probe(port: int) -> float | None:
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
                if time.perf_counter() - started > PROBE_TIMEOUT:
                    return None
    except OSError:
        return None
    if not answer.startswith(b"HTTP/1.1 200 "):
        return None
    return (time.perf_counter() - started) * 1000


def _probes(port: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    failed = 0
    for _ in range(PROBES):
        ms = _probe(port)
        if ms is None:
            failed += 1
        else:
            latencies.append(ms)
        time.sleep(PROBE_GAP)
    return latencies, failed


def run(ctx: Context) -> Result:
    result = Result(NAME)
    port = free_port()
    env = espm_env(PM_HTTP_PORT=str(port))
    proc = spawn(manager_argv("espm", ["sleep", "600"], False), env)
    scenarios: dict[str, dict[str, float]] = {}
    try:
        wait_for(lambda: proc.poll() is not None or listening(port), 15, f"port {port}")
        if proc.poll() is not None:
            raise BenchError(f"espm exited with {proc.returncode}")
        for mode in ("none", "idle", "slowloris", "churn"):
            flood = None
            if mode != "none":
                flood = Flood(port, FLOOD, mode)
                flood.start()
                time.sleep(1.0)  # the flood is in place
            latencies, failed = _probes(port)
            if flood is not None:
                flood.stopping.set()
                flood.join(10)
                time.sleep(1.0)  # let the server settle before the next one
            s = summary(latencies)
            scenarios[mode] = {
                "p50_ms": s["median"],
                "p99_ms": s["p99"],
                "max_ms": s["max"],
                "failed": failed,
            }
            ctx.log(
                f"  {mode:10s} /health p50 {s['median']:.2f} ms  p99 {s['p99']:.2f} ms  "
                f"max {s['max']:.2f} ms  failed {failed}/{PROBES}"
                + (f"  (flood opened {flood.opened} connections)" if flood else "")
            )
    finally:
        kill_tree(proc)
    result.details = {"flood": FLOOD, "probes": PROBES, "scenarios": scenarios}
    anchor = scenarios["none"]
    for mode in ("idle", "slowloris", "churn"):
        fig = scenarios[mode]
        result.rows.append(
            Row(
                f"/health p99, {FLOOD} {mode} (anchor: no flood {anchor['p99_ms']:.2f})",
                "ms",
                {"espm": fig["p99_ms"]},
                f"<= {P99_LIMIT_MS:g} ms, 0 failed",
                fig["p99_ms"] <= P99_LIMIT_MS and fig["failed"] == 0,
            )
        )
        result.rows.append(Row(f"/health failed, {FLOOD} {mode}", "", {"espm": int(fig["failed"])}))
    return result
