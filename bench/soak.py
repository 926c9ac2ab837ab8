"""soak: a real espm under every fault at once for minutes; checks memory, leaks, answers, keystore.

    python bench/soak.py --minutes 30          # the documented soak (README, "Soak")
    python bench/soak.py --seconds 60          # the CI version (tests/soak/test_soak.py)

espm runs with TLS on, the keystore updater on with reloads, `/metrics` and `/debug/vars` on, a
state file, over a stand-in Elasticsearch as its child (espm.standins.elasticsearch, started
through a wrapper that ignores SIGUSR1/SIGUSR2/SIGHUP, so signal storms are survivable) and the
stand-in `elasticsearch-keystore`. KEYSTORE_ES_ENDPOINT points at a fault proxy in this process
that passes TLS through to the stand-in, or, phase after phase, plays a misbehaving node: an
endless body, a certificate from another CA, resets after the handshake, answers that never
come (or drip), and JSON of unexpected types. Meanwhile, concurrently and for the whole run:
mixed API traffic (status, health, ready, keystore status, metrics, vars and bad requests, each
counted sent vs answered), stop/kill/start cycles through the API (some inside a signal storm),
signal storms to espm (bursts of USR1/USR2/HUP/WINCH), and Secret churn (`..data` swaps with
changing names and values, a few of them hostile names). Only loopback traffic; every loop is
bounded by the deadline; espm and its children are killed at the end whatever happens.

Checks (exit 1 when one fails, 2 when the soak could not run):
  rss        growth after warm-up under 2 MiB (the highest 5-sample rolling median after warm-up
             minus the median of the warm-up's last quarter)
  leaks      open fds, OS threads and asyncio tasks (from /debug/vars) back to their pre-traffic
             level once the traffic stopped; no zombie child of espm
  answers    every request answered, with an expected status, by kind
  keystore   the keystore file holds exactly the last Secret's valid settings (and the status says so)
  lifecycle  every stop/kill reached stopped/killed, every start started; the child survived
             every storm; espm never exited
  log        no traceback in espm's log
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import ROOT, descendants, espm_env, free_port, proc_state

sys.path.insert(0, str(ROOT / "src"))
from espm.standins.secret import SecretVolume

MIB = 1024 * 1024
RSS_LIMIT_MIB = 2.0
ROLLING = 5
CLIENT_TIMEOUT = 10.0  # a request not answered within this is "unanswered" (espm's own slow-client cutoff)
HUNG_AFTER = 60.0  # no request answered for this long: espm is hung, the run ends early
SETTLE_SECONDS = 45.0  # after the traffic: time for espm's own timeouts (ES request 30 s) to run out
KEYSTORE_WAIT = 90.0  # after the last swap: the update, and a reload past a capped backoff (60 s)
FD_TOLERANCE = 0
TASK_TOLERANCE = 0
THREAD_TOLERANCE = 0
PHASES = ("ok", "endless", "wrong-ca", "reset", "timeout", "bad-json")
STORM_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGWINCH)
# Inside a stop or kill the child ends: SIGHUP then would rightly end espm (SPEC: with no process,
# SIGHUP exits 0), so those storms leave it out.
STOP_STORM_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
CHILD_IGNORES = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
NAMES = [f"soak.setting.{i:02d}" for i in range(30)] + [
    "s3.client.default.access_key",
    "s3.client.default.secret_key",
    "gcs.client.default.credentials_file",
    "xpack.notification.email.account.a.smtp.secure_password",
]
HOSTILE_NAMES = ["-v", "--help", "--force", "-x", "bad name", "caf\u00e9"]
EXPECTED: dict[str, frozenset[int]] = {
    "status": frozenset({200}),
    "health": frozenset({200}),
    "ready": frozenset({200, 503}),
    "keystore": frozenset({200}),
    "metrics": frozenset({200}),
    "vars": frozenset({200}),
    "start": frozenset({200}),
    "stop": frozenset({202}),
    "kill": frozenset({202}),
    "bad-404": frozenset({404}),
    "bad-405": frozenset({405}),
    "bad-garbage": frozenset({400}),
    "bad-431": frozenset({431}),
    "bad-413": frozenset({413}),
    "bad-smuggle": frozenset({400}),
    "bad-dup-length": frozenset({400}),
}
GETS = {
    "status": "/es/status",
    "health": "/health",
    "ready": "/es/ready",
    "keystore": "/keystore/status",
    "metrics": "/metrics",
    "vars": "/debug/vars",
}
TRAFFIC_WEIGHTS = {
    "status": 5,
    "health": 5,
    "ready": 4,
    "keystore": 3,
    "metrics": 2,
    "vars": 2,
    "bad": 3,
}
RAW_BAD: dict[str, bytes] = {
    "bad-garbage": b"GARBAGE \x00\x01 nonsense\r\n\r\n",
    "bad-431": b"GET /health HTTP/1.1\r\nHost: soak\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "bad-413": b"POST /es/status HTTP/1.1\r\nHost: soak\r\nContent-Length: 2000000\r\n\r\n",
    # A request smuggled in the "body" of one that carries both framings (RFC 9112 6.1).
    "bad-smuggle": (
        b"GET /health HTTP/1.1\r\nHost: soak\r\nContent-Length: 39\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /es/status HTTP/1.1\r\nHost: soak\r\n\r\n"
    ),
    "bad-dup-length": (
        b"POST /es/status HTTP/1.1\r\nHost: soak\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    ),
}


class SoakError(Exception):
    """The soak could not run (setup), as opposed to a failed check."""


# -- figures: pure, unit-tested on recorded samples ---------------------------------------------


@dataclass
class Sample:
    """One look at espm: RSS from /proc, the rest from /debug/vars (None when it did not answer)."""

    t: float
    rss_kib: int
    fds: int | None = None
    threads: int | None = None
    tasks: int | None = None
    phase: str = ""


@dataclass
class Check:
    name: str
    passed: bool
    summary: str
    details: list[str] = field(default_factory=list)


def rolling_medians(values: Sequence[float], k: int = ROLLING) -> list[float]:
    if len(values) < k:
        return [statistics.median(values)] if values else []
    return [statistics.median(values[i : i + k]) for i in range(len(values) - k + 1)]


def check_rss(samples: Sequence[Sample], warmup: float, limit_mib: float = RSS_LIMIT_MIB) -> Check:
    """Growth after warm-up: the highest rolling median after it, minus the warm-up's settled level."""
    during = [s.rss_kib for s in samples if s.t < warmup]
    after = [s.rss_kib for s in samples if s.t >= warmup]
    if len(during) < 4 or len(after) < ROLLING:
        return Check("rss", False, f"too few samples ({len(during)} in warm-up, {len(after)} after)")
    baseline = statistics.median(during[-max(3, len(during) // 4) :])
    peak = max(rolling_medians(after))
    end = statistics.median(after[-ROLLING:])
    growth = (peak - baseline) / 1024
    passed = growth < limit_mib
    return Check(
        "rss",
        passed,
        f"growth after warm-up {growth:+.2f} MiB (limit {limit_mib:g}): warm-up level "
        f"{baseline / 1024:.2f} MiB, highest {ROLLING}-sample median after {peak / 1024:.2f} MiB, "
        f"end {end / 1024:.2f} MiB, single-sample max {max(after) / 1024:.2f} MiB",
    )


def rss_slopes(samples: Sequence[Sample], warmup: float, parts: int = 3) -> list[float]:
    """RSS slope (MiB per hour, least squares) over each of `parts` equal spans after warm-up."""
    after = [s for s in samples if s.t >= warmup]
    if len(after) < 2 * parts:
        return []
    size = len(after) // parts
    slopes = []
    for i in range(parts):
        chunk = after[i * size : (i + 1) * size if i < parts - 1 else len(after)]
        ts = [s.t for s in chunk]
        ys = [s.rss_kib / 1024 for s in chunk]
        mt, my = statistics.fmean(ts), statistics.fmean(ys)
        var = sum((t - mt) ** 2 for t in ts)
        slopes.append(
            sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * 3600 if var else 0.0
        )
    return slopes


def check_leaks(baseline: Sample | None, settled: Sample | None, zombies: Sequence[int]) -> Check:
    """Descriptors, threads and tasks back to their pre-traffic level; no zombie left."""
    if baseline is None or settled is None or None in (baseline.fds, settled.fds):
        return Check("leaks", False, "no /debug/vars runtime counts (open_fds, threads, asyncio_tasks)")
    problems = []
    figures = []
    for label, before, after, tolerance in (
        ("fds", baseline.fds, settled.fds, FD_TOLERANCE),
        ("threads", baseline.threads, settled.threads, THREAD_TOLERANCE),
        ("tasks", baseline.tasks, settled.tasks, TASK_TOLERANCE),
    ):
        figures.append(f"{label} {before} -> {after}")
        if before is None or after is None:
            problems.append(f"{label}: not reported")
        elif after - before > tolerance:
            problems.append(f"{label}: {after - before} more than before the traffic")
    if zombies:
        problems.append(f"zombie children of espm: {sorted(zombies)}")
    summary = ", ".join(figures) + (f", zombies {len(zombies)}")
    return Check("leaks", not problems, summary + ("; " + "; ".join(problems) if problems else ""))


@dataclass
class Kind:
    sent: int = 0
    answered: int = 0
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)


def check_answers(kinds: Mapping[str, Kind]) -> Check:
    """Every request answered, with a status expected for its kind."""
    sent = sum(k.sent for k in kinds.values())
    answered = sum(k.answered for k in kinds.values())
    details = []
    bad = False
    for name in sorted(kinds):
        k = kinds[name]
        line = f"{name:<15} sent {k.sent:>6}  answered {k.answered:>6}  unexpected {k.unexpected:>4}"
        if k.sent != k.answered or k.unexpected:
            bad = True
            line += "   <- " + " | ".join(k.examples[:3])
        details.append(line)
    unexpected = sum(k.unexpected for k in kinds.values())
    summary = f"{answered} of {sent} requests answered, {unexpected} with an unexpected status"
    return Check("answers", not bad and sent > 0, summary, details)


def traceback_causes(log: str) -> Counter[str]:
    """Each traceback in espm's log, by its last line (the exception), with the message logged."""
    causes: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and "Traceback" in str(record.get("error.stack_trace", "")):
                last = str(record["error.stack_trace"]).strip().splitlines()[-1]
                causes[f"{record.get('message', '')}: {last}"] += 1
                continue
        if line.startswith("Traceback"):
            before = lines[i - 1] if i else ""
            last = next((ln for ln in lines[i + 1 :] if ln and not ln.startswith(" ")), "?")
            causes[f"{before}: {last}" if not before.startswith("{") else last] += 1
    return causes


def check_log(log: str) -> Check:
    """No traceback in espm's log."""
    causes = traceback_causes(log)
    total = sum(causes.values())
    details = [f"{n} x {cause[:240]}" for cause, n in causes.most_common(5)]
    summary = f"{total} tracebacks in espm's log ({len(log.encode()) / MIB:.1f} MiB of log)"
    return Check("log", total == 0, summary, details)


def expected_keystore(secret: Mapping[str, bytes]) -> dict[str, bytes]:
    """What the keystore must hold of a Secret: its valid names (SPEC: [A-Za-z0-9_.-]+, no leading -)."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
    return {n: v for n, v in secret.items() if n and set(n) <= allowed and not n.startswith(("-", "."))}


def check_keystore(
    expected: Mapping[str, bytes], keystore: Mapping[str, bytes] | None, status_settings: Sequence[str] | None
) -> Check:
    """The keystore equals the last Secret's valid settings (entries espm does not manage aside)."""
    if keystore is None:
        return Check("keystore", False, "no readable keystore file")
    managed = {n: v for n, v in keystore.items() if n != "keystore.seed"}
    problems = []
    missing = sorted(set(expected) - set(managed))
    extra = sorted(set(managed) - set(expected))
    wrong = sorted(n for n in set(expected) & set(managed) if expected[n] != managed[n])
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"not in the Secret {extra}")
    if wrong:
        problems.append(f"other values for {wrong}")
    if status_settings is not None and sorted(status_settings) != sorted(expected):
        problems.append(f"/keystore/status lists {sorted(status_settings)}")
    summary = f"{len(expected)} settings expected, {len(managed)} in the keystore"
    return Check(
        "keystore", not problems, summary + ("; " + "; ".join(problems) if problems else ", all equal")
    )


def rss_table(samples: Sequence[Sample], rows: int = 20) -> list[str]:
    """RSS (and the runtime counts) over time: `rows` evenly spaced samples."""
    if not samples:
        return []
    step = max(1, len(samples) // rows)
    picked = list(samples[::step])
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    out = [f"{'t (s)':>8} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'tasks':>5}  phase"]
    for s in picked:
        out.append(
            f"{s.t:>8.0f} {s.rss_kib / 1024:>8.2f} {_dash(s.fds):>5} {_dash(s.threads):>7} "
            f"{_dash(s.tasks):>5}  {s.phase}"
        )
    return out


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


# -- certificates (openssl, as espm demo does) ------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def issue(folder: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return cert, key


# -- the fault proxy: KEYSTORE_ES_ENDPOINT ------------------------------------------------------


BAD_ROOT = [b"[]", b'"green"', b"null", b'{"version": "8.15.0"}', b'{"version": {"number": 8}}',
            b'{"version": []}', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe not utf-8"]  # fmt: skip
BAD_RELOAD = [b"[]", b'{"_nodes": []}', b'{"_nodes": "all"}', b'{"_nodes": {"failed": "1"}}',
              b'{"_nodes": {"failed": 1, "failures": 7}}',
              b'{"_nodes": {"failed": 1, "failures": [1, null]}}',
              b'{"nodes": []}', b'{"nodes": {"n1": {"reload_exception": 5}}}',
              b'{"nodes": {"n1": {"keystore_digest": 7}}}', b'{"nodes": {"n1": []}}',
              b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe not utf-8"]  # fmt: skip
FAULT_HOLD = 120.0  # the longest any fault connection lives
ENDLESS_CAP = 256 * MIB


def _gone(writer: asyncio.StreamWriter) -> bool:
    """The peer is gone. (Over TLS, drain() does not say so: the SSL layer keeps taking writes.)"""
    sock = writer.get_extra_info("socket")
    return writer.transport.is_closing() or sock is None or sock.fileno() == -1


class FaultProxy:
    """A loopback server in front of the stand-in Elasticsearch that misbehaves by phase."""

    def __init__(self, upstream: int, good: tuple[Path, Path], wrong: tuple[Path, Path]) -> None:
        self.upstream = upstream
        self.mode = "ok"
        self.connections: dict[str, int] = {}
        self.streamed = 0  # bytes of endless bodies written
        self.port = 0
        self._good = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._good.load_cert_chain(*good)
        self._wrong = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._wrong.load_cert_chain(*wrong)
        self._loop = asyncio.new_event_loop()
        # asyncio's own errors on connections the faults tear down (a transport closed twice when
        # an abort meets a reset) are counted, not printed over the soak's output.
        self.loop_errors: Counter[str] = Counter()
        self._loop.set_exception_handler(
            lambda loop, context: self.loop_errors.update([repr(context.get("exception"))[:120]])
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket
        self._acceptor: Any = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._rng = random.Random(7)

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._thread.start()
        self._acceptor = asyncio.run_coroutine_threadsafe(self._accept_loop(), self._loop)

    def active(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    def drop_all(self) -> None:
        """Abort every fault connection (at the end: espm's waits end now, not after its timeouts)."""

        def abort() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(abort)

    def close(self) -> None:
        async def shut() -> None:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._acceptor.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._listener.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            task = loop.create_task(self._accept(conn, self.mode))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _accept(self, conn: socket.socket, mode: str) -> None:
        # The TLS handshake is made on the accepted socket itself (not by start_tls on a stream,
        # whose reader may already hold the ClientHello).
        self.connections[mode] = self.connections.get(mode, 0) + 1
        loop = asyncio.get_running_loop()
        context = None if mode == "ok" else self._wrong if mode == "wrong-ca" else self._good
        reader = asyncio.StreamReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=context, ssl_handshake_timeout=10 if context else None
            )
        except (OSError, ssl.SSLError, TimeoutError):
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self._writers.add(writer)
        try:
            await asyncio.wait_for(self._serve(mode, reader, writer), FAULT_HOLD)
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _serve(self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode == "ok":
            await self._pipe(reader, writer)
            return
        variant = self._rng.randrange(3)
        if mode == "reset" and variant == 0:
            return self._reset(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0]
        if mode == "reset":
            if variant == 2:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Len")
                await writer.drain()
            return self._reset(writer)
        if mode == "timeout":
            if variant == 0:
                # Drips a head, one byte a second: every read returns something, none completes.
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Drip: " + b"x" * 200:
                    if _gone(writer):
                        return
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1)
            await reader.read()  # silence until espm gives up (or FAULT_HOLD)
            return
        if mode == "endless":
            await self._endless(writer, chunked=variant != 0)
            return
        if mode == "bad-json" or mode == "wrong-ca":
            bodies = BAD_RELOAD if b"reload_secure_settings" in request_line else BAD_ROOT
            body = self._rng.choice(bodies)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _endless(self, writer: asyncio.StreamWriter, chunked: bool) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Connection: close\r\n\r\n"
        writer.write(head)
        piece = b'{"name": "' + b"x" * 65536
        data = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
        sent = 0
        while sent < ENDLESS_CAP and not _gone(writer):
            writer.write(data)
            await writer.drain()
            # drain() returns at once while the transport takes more: yield, so that the loss of
            # the connection (a callback) can be seen.
            await asyncio.sleep(0)
            sent += len(data)
            self.streamed += len(data)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream), 5
            )
        except (OSError, TimeoutError):
            return  # the child is stopped: espm sees a closed connection, as with a node down

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            up_writer.transport.abort()


# -- talking to espm ---------------------------------------------------------------------------


class Tally:
    """Requests sent and answered, by kind (thread-safe)."""

    def __init__(self) -> None:
        self.kinds: dict[str, Kind] = {}
        self.last_answer = time.monotonic()
        self._lock = threading.Lock()

    def record(self, kind: str, status: int | None, error: str = "") -> None:
        with self._lock:
            k = self.kinds.setdefault(kind, Kind())
            k.sent += 1
            if status is None:
                if len(k.examples) < 5:
                    k.examples.append(f"unanswered: {error}")
                return
            k.answered += 1
            self.last_answer = time.monotonic()
            if status not in EXPECTED[kind]:
                k.unexpected += 1
                if len(k.examples) < 5:
                    k.examples.append(f"HTTP {status} {error}".strip())

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return sum(k.sent for k in self.kinds.values()), sum(k.answered for k in self.kinds.values())


class Api:
    """espm's API over TLS (the chain checked against the soak's CA)."""

    def __init__(self, port: int, ca: Path, tally: Tally) -> None:
        self.port = port
        self.tally = tally
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.check_hostname = False

    def connection(self, timeout: float = CLIENT_TIMEOUT) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.context)

    def call(self, kind: str, method: str, path: str, conn: http.client.HTTPSConnection | None = None) -> Any:
        """One counted request; returns the decoded JSON (or text), or None when unanswered."""
        own = conn is None
        c = conn or self.connection()
        try:
            c.request(method, path, headers={"Connection": "close" if own else "keep-alive"})
            answer = c.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as err:
            self.tally.record(kind, None, f"{type(err).__name__}: {err}")
            return None
        finally:
            if own:
                c.close()
        doc: Any = body.decode(errors="replace")
        if answer.getheader("Content-Type", "").startswith("application/json"):
            try:
                doc = json.loads(body)
            except ValueError:
                self.tally.record(kind, answer.status, f"not JSON: {body[:80]!r}")
                return None
        self.tally.record(kind, answer.status, "" if answer.status in EXPECTED[kind] else str(body[:120]))
        return doc

    def quiet(self, path: str, timeout: float = CLIENT_TIMEOUT) -> Any:
        """An uncounted GET for the soak's own bookkeeping (None on any failure)."""
        c = self.connection(timeout)
        try:
            c.request("GET", path)
            answer = c.getresponse()
            body = answer.read()
            return json.loads(body) if answer.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            c.close()

    def raw(self, kind: str, data: bytes) -> None:
        """A malformed request on its own connection; any HTTP answer counts as answered."""
        try:
            plain = socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT)
            with plain, self.context.wrap_socket(plain) as sock:
                with contextlib.suppress(OSError):
                    sock.sendall(data)  # a server may answer and close before it all arrives
                answer = http.client.HTTPResponse(sock, method="GET")
                answer.begin()
                body = answer.read()
                extra = b""
                if answer.status in EXPECTED[kind]:
                    # A smuggled request must not be answered: the connection ends after the 400.
                    sock.settimeout(0.5)
                    with contextlib.suppress(OSError, ssl.SSLError):
                        extra = sock.recv(4096)
        except (OSError, http.client.HTTPException) as err:
            self.tally.record(kind, None, f"{type(err).__name__}: {err}")
            return
        note = "" if not extra else f"and then answered more: {extra[:60]!r}"
        status = answer.status if not extra else -answer.status
        self.tally.record(kind, status, note or str(body[:100]))


# -- the soak ---------------------------------------------------------------------------------


@dataclass
class Plan:
    seconds: float
    warmup: float
    phase: float
    sample_every: float
    traffic_rate: float
    cycle_every: float
    storm_every: float
    swap_every: float
    seed: int
    phases: tuple[str, ...] = PHASES
    storms: bool = True

    @classmethod
    def for_duration(cls, seconds: float, seed: int, phases: Sequence[str] = PHASES) -> Plan:
        phase = min(20.0, max(3.5, seconds / 15))
        warmup = max(20.0, len(phases) * phase, min(300.0, seconds / 3))
        return cls(
            seconds=seconds,
            warmup=min(warmup, seconds / 2),
            phase=phase,
            sample_every=2.0 if seconds <= 300 else 5.0,
            traffic_rate=25.0,
            cycle_every=6.0 if seconds <= 300 else 15.0,
            storm_every=3.0 if seconds <= 300 else 6.0,
            swap_every=1.0 if seconds <= 300 else 2.0,
            seed=seed,
            phases=tuple(phases),
        )


class Soak:
    def __init__(self, plan: Plan, root: Path, log: Callable[[str], None], pprof: bool = False) -> None:
        self.plan = plan
        self.pprof = pprof
        self.root = root
        self.log = log
        self.rng = random.Random(plan.seed)
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.lifecycle = threading.Lock()  # storms vs starts: a storm never meets a child still booting
        self.failures: list[str] = []  # lifecycle and storm failures, as they happen
        self.counts = {"cycles": 0, "storms": 0, "storm_signals": 0, "swaps": 0, "hostile_swaps": 0}
        self.last_secret: dict[str, bytes] = {}
        self.child_pid = 0
        self.started_at = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy: FaultProxy | None = None
        self.espm_exit: str | None = None

    def now(self) -> float:
        return time.monotonic() - self.started_at

    def fail(self, message: str) -> None:
        self.failures.append(f"t={self.now():.0f}s {message}")
        self.log(f"  ! {message}")

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        root = self.root
        certs = root / "certs"
        certs.mkdir()
        ca = make_ca(certs, "soak-ca")
        self.ca = ca[0]
        api_cert = issue(certs, ca, "espm-api")
        es_cert = issue(certs, ca, "es-node")
        wrong = issue(certs, make_ca(certs, "other-ca"), "impostor")
        secrets_dir, config, bin_dir = root / "secrets", root / "config", root / "bin"
        for folder in (config, bin_dir):
            folder.mkdir()
        self.secret = SecretVolume(secrets_dir)
        self.swap()
        (config / "elasticsearch.yml").write_text("cluster.name: soak\n")
        self.keystore_path = config / "elasticsearch.keystore"
        tool = bin_dir / "elasticsearch-keystore"
        tool.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m espm.standins.keystore_tool "$@"\n'
        )
        tool.chmod(0o755)
        child = root / "child.py"
        child.write_text(
            '"""The stand-in Elasticsearch, ignoring the storms\' signals (SIG_IGN survives exec)."""\n'
            "import os, signal, sys\n"
            f"for s in {[int(s) for s in CHILD_IGNORES]}:\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            'os.execv(sys.executable, [sys.executable, "-m", "espm.standins.elasticsearch", *sys.argv[1:]])\n'
        )
        password = root / "es-password"
        password.write_text("soak-password\n")
        self.es_port = free_port()
        self.api_port = free_port()
        self.proxy = FaultProxy(self.es_port, es_cert, wrong)
        self.proxy.start()
        command = [sys.executable, str(child), "--port", str(self.es_port), "--cert", str(es_cert[0]),
                   "--key", str(es_cert[1]), "--user", "elastic", "--password", "soak-password",
                   "--keystore", str(self.keystore_path)]  # fmt: skip
        env = espm_env(
            PM_KEYSTORE_UPDATER="true",
            PM_PROC_CMD=shlex.join(command),
            PM_HTTP_PORT=str(self.api_port),
            PM_TLS="true",
            PM_CERT_PATH=str(api_cert[0]),
            PM_KEY_PATH=str(api_cert[1]),
            PM_EXP_VARS="true",
            PM_METRICS="true",
            PM_STATE_FILE=str(root / "state.json"),
            PM_CONFIG_FILE=str(config / "elasticsearch.yml"),
            PM_SUCCESS_EXIT_CODES="143",
            # The stand-in can lose a SIGTERM that lands while its main thread starts a request
            # thread (socketserver's handle_error swallows the exception the handler raises):
            # espm then ends it as a pod's grace period would.
            PM_STOP_TIMEOUT="5",
            PM_LOG_LEVEL="info",
            PM_LOG_FORMAT="json",
            KEYSTORE_SOURCE_DIR=str(secrets_dir),
            KEYSTORE_BINARY=str(tool),
            KEYSTORE_PATH=str(self.keystore_path),
            KEYSTORE_RELOAD_CREDENTIALS="true",
            KEYSTORE_ES_USERNAME="elastic",
            KEYSTORE_ES_PASSWORD_FILE=str(password),
            KEYSTORE_ES_ENDPOINT=f"https://127.0.0.1:{self.proxy.port}",
            KEYSTORE_ES_CA_CERTS_PATH=str(self.ca),
            STANDIN_KEYSTORE_DELAY="0",
            PM_PROFILER="true" if self.pprof else "false",
        )
        self.log_path = root / "espm.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "espm", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.api = Api(self.api_port, self.ca, self.tally)
        deadline = time.monotonic() + 60
        while True:
            doc = self.api.quiet("/keystore/status", timeout=2)
            status = self.api.quiet("/es/status", timeout=2)
            if doc and doc.get("reloads", 0) >= 1 and status and status.get("state") == "started":
                self.child_pid = int(status["pid"])
                break
            if self.proc.poll() is not None:
                raise SoakError(f"espm exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise SoakError(f"espm not up with a reloaded keystore within 60 s:\n{self.log_tail()}")
            time.sleep(0.2)
        if not self.wait_ignoring(self.child_pid):
            raise SoakError("the child never ignored the storm signals")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- activities -------------------------------------------------------------------------

    def until_stopped(self, every: float, action: Callable[[], None], jitter: float = 0.5) -> None:
        while not self.stop.is_set():
            try:
                action()
            except Exception as err:  # a soak bug must be seen, not end a thread silently
                self.fail(f"{action.__name__} raised {type(err).__name__}: {err}")
            self.stop.wait(every * self.rng.uniform(1 - jitter, 1 + jitter))

    def traffic(self) -> None:
        rng = random.Random(self.rng.random())
        kinds = list(TRAFFIC_WEIGHTS)
        weights = list(TRAFFIC_WEIGHTS.values())
        while not self.stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            if kind == "bad":
                bad = rng.choice([*RAW_BAD, "bad-404", "bad-405"])
                if bad == "bad-404":
                    self.api.call(
                        bad, "GET", rng.choice(["/nope", "/es/nope", "/keystore", "/debug/pprof/x"])
                    )
                elif bad == "bad-405":
                    self.api.call(bad, rng.choice(["GET", "PUT", "DELETE"]), "/es/stop")
                else:
                    self.api.raw(bad, RAW_BAD[bad])
            elif rng.random() < 0.3:
                # Keep-alive: a few requests back to back on one connection.
                conn = self.api.connection()
                try:
                    for _ in range(rng.randint(2, 5)):
                        k = rng.choices(kinds[:-1], weights[:-1])[0]
                        if self.api.call(k, "GET", GETS[k], conn) is None:
                            break
                finally:
                    conn.close()
            else:
                self.api.call(kind, "GET", GETS[kind])
            self.stop.wait(rng.expovariate(self.plan.traffic_rate / 2))

    def storm(self, signals: Sequence[int], count: int) -> None:
        pid = self.proc.pid if self.proc else 0
        rng = random.Random(self.rng.random())
        for _ in range(count):
            try:
                os.kill(pid, rng.choice(signals))
            except ProcessLookupError:
                return
        self.counts["storm_signals"] += count

    def storm_round(self) -> None:
        with self.lifecycle:
            pid = self.child_pid
            if not pid or not ignoring(pid):
                return
            count = self.rng.choice([500, 1000, 2000, 5000, 10_000])
            self.storm(STORM_SIGNALS, count)
            self.counts["storms"] += 1
            time.sleep(0.3)
            status = self.api.call("status", "GET", "/es/status")
            state = proc_state(pid)
            if state is None or state == "Z":
                self.fail(f"the child {pid} died in a storm of {count} signals (state {state})")
            elif status is not None and (status.get("state") != "started" or status.get("pid") != pid):
                self.fail(
                    f"after a storm of {count}, espm says {status.get('state')} pid {status.get('pid')}"
                )

    def cycle(self) -> None:
        variants = (
            ["stop", "kill", "stop-in-storm", "kill-in-storm"] if self.plan.storms else ["stop", "kill"]
        )
        variant = self.rng.choice(variants)
        action = variant.split("-")[0]
        with self.lifecycle:
            old = self.child_pid
            storm: threading.Thread | None = None
            if variant.endswith("storm"):
                storm = threading.Thread(target=self.storm, args=(STOP_STORM_SIGNALS, 5000))
                storm.start()
            self.api.call(action, "POST", f"/es/{action}")
            if storm is not None:
                storm.join()
            want = "stopped" if action == "stop" else "killed"
            doc = self.wait_state({want}, 15)
            if doc is None or doc.get("state") != want:
                self.fail(
                    f"{variant}: espm says {doc and doc.get('state')} 15 s later, not {want} "
                    f"(the child {old} is {proc_state(old) or 'gone'})"
                )
                return
            if proc_state(old) is not None:
                self.fail(f"{variant}: the old child {old} is still there ({proc_state(old)})")
            self.stop.wait(self.rng.uniform(0.2, 1.5))
            doc = self.api.call("start", "POST", "/es/start")
            if doc is None or doc.get("state") != "started" or not doc.get("pid"):
                self.fail(f"start after {variant}: answered {doc}")
                doc = self.wait_state({"started"}, 10)
                if doc is None or doc.get("state") != "started":
                    return
            self.child_pid = int(doc["pid"])
            if not self.wait_ignoring(self.child_pid):
                self.fail(f"the new child {self.child_pid} did not come up")
            self.counts["cycles"] += 1

    def wait_state(self, states: set[str], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        doc = None
        while time.monotonic() < deadline:
            doc = self.api.call("status", "GET", "/es/status")
            if doc is not None and doc.get("state") in states:
                return doc
            time.sleep(0.1)
        return doc

    def wait_ignoring(self, pid: int, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ignoring(pid):
                return True
            time.sleep(0.02)
        return False

    def swap(self) -> None:
        """One Secret update, the kubelet's way; sometimes a burst of them, sometimes a hostile name."""
        for _ in range(self.rng.randint(3, 8) if self.rng.random() < 0.1 else 1):
            names = self.rng.sample(NAMES, self.rng.randint(1, 15))
            if self.rng.random() < 0.05:
                names.append(self.rng.choice(HOSTILE_NAMES))
                self.counts["hostile_swaps"] += 1
            values = {n: self.rng.randbytes(self.rng.randint(1, 300)) for n in names}
            self.secret.write(values)
            self.last_secret = values
            self.counts["swaps"] += 1
            time.sleep(0.01)

    def sample(self, counted: bool = True) -> Sample:
        rss = 0
        with (
            contextlib.suppress(OSError, ValueError),
            open(f"/proc/{self.proc.pid if self.proc else 0}/status") as f,
        ):
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        doc = (
            self.api.call("vars", "GET", "/debug/vars") if counted else self.api.quiet("/debug/vars")
        ) or {}
        runtime = doc.get("runtime") or {}
        return Sample(
            t=round(self.now(), 2),
            rss_kib=rss,
            fds=runtime.get("open_fds"),
            threads=runtime.get("threads"),
            tasks=runtime.get("asyncio_tasks"),
            phase=self.proxy.mode if self.proxy else "",
        )

    def sampler(self) -> None:
        next_progress = 0.0
        while not self.stop.is_set():
            s = self.sample()
            self.samples.append(s)
            if s.t >= next_progress:
                sent, answered = self.tally.totals()
                self.log(
                    f"t={s.t:>5.0f}s phase={s.phase:<8} rss={s.rss_kib / 1024:6.2f} MiB fds={_dash(s.fds)} "
                    f"threads={_dash(s.threads)} tasks={_dash(s.tasks)} requests={answered}/{sent} "
                    f"swaps={self.counts['swaps']} storms={self.counts['storms']} "
                    f"cycles={self.counts['cycles']}"
                )
                next_progress = s.t + max(10.0, self.plan.seconds / 30)
            self.stop.wait(self.plan.sample_every)

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> list[Check]:
        plan = self.plan
        self.log(
            f"soak: {plan.seconds:.0f} s, warm-up {plan.warmup:.0f} s, fault phases of {plan.phase:.1f} s"
        )
        self.started_at = time.monotonic()
        self.setup()
        assert self.proc is not None and self.proxy is not None
        time.sleep(1)
        # The quiet level: the lowest of a few looks (a check or a reload may be under way in one).
        baseline = None
        for _ in range(6):
            baseline = lowest(baseline, self.sample(counted=False))
            time.sleep(0.5)
        assert baseline is not None
        self.started_at = time.monotonic()
        self.log(
            f"espm pid {self.proc.pid}, API https://127.0.0.1:{self.api_port}, before traffic: {baseline}"
        )
        threads = [
            threading.Thread(target=self.traffic, name="traffic-1"),
            threading.Thread(target=self.traffic, name="traffic-2"),
            threading.Thread(target=self.until_stopped, args=(plan.cycle_every, self.cycle), name="cycles"),
            *(
                [threading.Thread(target=self.until_stopped, args=(plan.storm_every, self.storm_round))]
                if plan.storms
                else []
            ),
            threading.Thread(target=self.until_stopped, args=(plan.swap_every, self.swap), name="churn"),
            threading.Thread(target=self.sampler, name="sampler"),
        ]
        for t in threads:
            t.start()
        phase_index = 0
        next_phase = plan.phase
        try:
            while self.now() < plan.seconds:
                if self.proc.poll() is not None:
                    self.espm_exit = f"espm exited with {self.proc.returncode} at t={self.now():.0f}s"
                    self.log(f"  ! {self.espm_exit}")
                    break
                silent = time.monotonic() - self.tally.last_answer
                if silent > HUNG_AFTER:
                    self.espm_exit = (
                        f"espm answered nothing for {silent:.0f} s at t={self.now():.0f}s (hung: "
                        f"{_proc_line(self.proc.pid, 'State')}, waiting in {_wchan(self.proc.pid)}); "
                        "run ended early"
                    )
                    self.log(f"  ! {self.espm_exit}")
                    break
                if self.now() >= next_phase:
                    phase_index += 1
                    self.proxy.mode = plan.phases[phase_index % len(plan.phases)]
                    next_phase += plan.phase
                time.sleep(0.1)
        finally:
            self.stop.set()
            for t in threads:
                t.join(60)
        self.proxy.mode = "ok"
        self.proxy.drop_all()
        return self.finish(baseline)

    def finish(self, baseline: Sample) -> list[Check]:
        assert self.proc is not None
        checks: list[Check] = []
        self.log(f"traffic stopped at t={self.now():.0f}s; settling (Elasticsearch answers again)")
        # The keystore: the last Secret, once the update (and the reload, past its backoff) ran.
        expected = expected_keystore(self.last_secret)
        keystore: dict[str, bytes] | None = None
        status: Any = None
        reloaded = False
        deadline = time.monotonic() + KEYSTORE_WAIT
        while self.proc.poll() is None and time.monotonic() < deadline:
            keystore = read_keystore(self.keystore_path)
            status = self.api.quiet("/keystore/status")
            settings = status.get("settings") if status else None
            equal = check_keystore(expected, keystore, settings).passed
            reloaded = (
                bool(status)
                and status.get("state") == "running"
                and status.get("reason") == "Secure settings reloaded"
            )
            if equal and reloaded:
                break
            time.sleep(0.5)
        keystore = read_keystore(self.keystore_path)
        k = check_keystore(expected, keystore, status.get("settings") if status else None)
        k.details.append(f"final /keystore/status: {json.dumps(status)}")
        if not reloaded:
            k.details.append("(the last update was not reloaded within the wait)")
        checks.append(k)
        # Leaks: back to the level before the traffic, once espm's own timeouts ran out.
        settled = None
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.proc.poll() is None and time.monotonic() < deadline:
            settled = lowest(settled, self.sample(counted=False))
            if _back_to(settled, baseline):
                break
            time.sleep(0.5)
        zombies = (
            [p for p in descendants(self.proc.pid) if proc_state(p) == "Z"]
            if self.proc.poll() is None
            else []
        )
        leaks = check_leaks(baseline, settled, zombies)
        if not leaks.passed and status and status.get("state") == "failed":
            leaks.details.append("(the updater is failing: its backoff wait is one more asyncio task)")
        if not leaks.passed and self.pprof:
            leaks.details += self.task_list()
        checks.append(leaks)
        checks.append(check_rss(self.samples, self.plan.warmup))
        checks.append(check_answers(self.tally.kinds))
        lifecycle = list(self.failures)
        if self.espm_exit or self.proc.poll() is not None:
            lifecycle.append(self.espm_exit or f"espm exited with {self.proc.returncode}")
        c = self.counts
        checks.append(
            Check(
                "lifecycle",
                not lifecycle,
                f"{c['cycles']} stop/kill/start cycles, {c['storms']} storms ({c['storm_signals']} signals), "
                f"{c['swaps']} Secret swaps ({c['hostile_swaps']} with a hostile name); "
                + (f"{len(lifecycle)} failures" if lifecycle else "all held"),
                lifecycle[:10],
            )
        )
        checks.append(check_log(self.log_tail(1 << 30)))
        return checks

    def task_list(self) -> list[str]:
        """The first line of each asyncio task and thread, from /debug/pprof/tasks (with --pprof)."""
        c = self.api.connection()
        try:
            c.request("GET", "/debug/pprof/tasks")
            text = c.getresponse().read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as err:
            return [f"/debug/pprof/tasks: {err}"]
        finally:
            c.close()
        return [line[:200] for line in text.splitlines() if line.startswith(("task ", "thread "))]

    def teardown(self) -> None:
        if self.proc is not None:
            for pid in reversed([self.proc.pid, *descendants(self.proc.pid)]):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.proxy is not None:
            self.proxy.close()


def _proc_line(pid: int, key: str) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.strip()
    return f"{key}: ?"


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text() or "?"
    except OSError:
        return "?"


def lowest(a: Sample | None, b: Sample) -> Sample:
    """Field by field, the lowest runtime counts of two looks (a missing count stays missing)."""
    if a is None:
        return b

    def low(x: int | None, y: int | None) -> int | None:
        return None if x is None or y is None else min(x, y)

    return Sample(
        b.t,
        min(a.rss_kib, b.rss_kib),
        low(a.fds, b.fds),
        low(a.threads, b.threads),
        low(a.tasks, b.tasks),
        b.phase,
    )


def _back_to(s: Sample, baseline: Sample) -> bool:
    pairs = ((s.fds, baseline.fds), (s.threads, baseline.threads), (s.tasks, baseline.tasks))
    return all(a is not None and b is not None and a <= b for a, b in pairs)


def ignoring(pid: int) -> bool:
    """True when `pid` runs and ignores every signal a storm sends that would end it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False
    if fields.get("State", "").strip().startswith("Z"):
        return False
    mask = int(fields.get("SigIgn", "0").strip(), 16)
    return all(mask & (1 << (s - 1)) for s in CHILD_IGNORES)


def read_keystore(path: Path) -> dict[str, bytes] | None:
    """The keystore's settings, read with the stand-in tool's own reader (it owns the format)."""
    from espm.standins import keystore_tool

    try:
        found = keystore_tool.read_keystore(path)
    except Exception:
        return None
    return dict(found) if found is not None else None


def report(
    checks: Sequence[Check], samples: Sequence[Sample], plan: Plan, log: Callable[[str], None]
) -> bool:
    log("")
    log("RSS over time (from /proc; fds, threads and tasks from /debug/vars):")
    for line in rss_table(samples):
        log("  " + line)
    slopes = rss_slopes(samples, plan.warmup)
    if slopes:
        log("RSS slope after warm-up, by thirds: " + ", ".join(f"{s:+.2f}" for s in slopes) + " MiB/hour")
    log("")
    for c in checks:
        log(f"{'PASS' if c.passed else 'FAIL'}  {c.name:<10} {c.summary}")
        for d in c.details:
            log(f"      {d}")
    passed = all(c.passed for c in checks)
    failed = [c.name for c in checks if not c.passed]
    log("")
    log("soak PASSED" if passed else f"soak FAILED: {', '.join(failed)}")
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long to drive espm (default 30)")
    length.add_argument("--seconds", type=float, help="the same in seconds (CI: 60)")
    parser.add_argument(
        "--warmup", type=float, help="seconds not counted in the RSS growth (default: scaled)"
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="the Elasticsearch phases, in turn (default: all; `ok` alone: no faults)",
    )
    parser.add_argument("--no-storms", action="store_true", help="no signal storms (nor cycles inside one)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the traffic, churn and faults")
    parser.add_argument("--json", type=Path, help="also save the samples, counts and checks here")
    parser.add_argument(
        "--pprof",
        action="store_true",
        help="turn on /debug/pprof and list espm's tasks when the leak check fails (tracemalloc: RSS grows)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (espm's log, keystore)"
    )
    args = parser.parse_args(argv)
    seconds = (
        args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 30)
    )
    if seconds < 30:
        parser.error("a soak needs at least 30 seconds")
    phases = [p for p in args.phases.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        parser.error(f"--phases: unknown {unknown}; choose from {', '.join(PHASES)}")
    plan = Plan.for_duration(seconds, args.seed, phases)
    plan.storms = not args.no_storms
    if args.warmup is not None:
        plan.warmup = args.warmup
    if shutil.which("openssl") is None:
        print("soak: needs openssl (certificates)", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, flush=True)

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the cleanup below runs: espm and its children are killed

    signal.signal(signal.SIGTERM, terminated)
    root = Path(tempfile.mkdtemp(prefix="espm-soak-"))
    soak = Soak(plan, root, log, pprof=args.pprof)
    try:
        checks = soak.run()
    except SoakError as err:
        print(f"soak could not run: {err}", file=sys.stderr)
        return 2
    finally:
        soak.teardown()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    passed = report(checks, soak.samples, plan, log)
    log(f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {plan.seconds:.0f} s, seed {plan.seed})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "plan": asdict(plan),
                    "samples": [asdict(s) for s in soak.samples],
                    "kinds": {n: asdict(k) for n, k in soak.tally.kinds.items()},
                    "counts": soak.counts,
                    "proxy_connections": soak.proxy.connections if soak.proxy else {},
                    "proxy_loop_errors": dict(soak.proxy.loop_errors) if soak.proxy else {},
                    "checks": [asdict(c) for c in checks],
                },
                indent=1,
            )
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
