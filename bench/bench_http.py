"""http: the API under load (wrk, 64 keep-alive connections), and SIGTERM forwarding meanwhile.

espm serves `GET /es/status` to `wrk -t1 -c64 --latency` for DURATION seconds; supervisord's
XML-RPC `supervisor.getProcessInfo` (a POST, from a wrk Lua script) is the anchor under the same
load. Figures are wrk's own: Requests/sec and the 99% latency line, plus its error counts
("Non-2xx or 3xx responses", which wrk counts as status >= 400, and "Socket errors").

While wrk runs against espm, SIGNALS SIGTERMs ~20 ms apart are sent to espm, whose child
(`helper sig`) handles SIGTERM without exiting and stamps CLOCK_MONOTONIC first thing in its
handler, as in the `signal` benchmark: the figure is kill(2) to the child's handler. espm runs as
PID 1 of its own pid namespace (`unshare --pid --fork --mount-proc`) when root, else as an
ordinary process (noted).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from bench_memory import SUPERVISORD_CONF
from harness import (
    SUPERVISORD,
    BenchError,
    Context,
    Result,
    Row,
    Running,
    espm_env,
    free_port,
    kill_tree,
    listening,
    summary,
    wait_for,
)

NAME = "http"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
CONNECTIONS = 64
DURATION = 8  # seconds of measured load, per server
WARMUP = 1  # seconds of unmeasured load first (connections, caches), per server
SIGNALS = 100
SIGNAL_WARMUP = 5  # untimed SIGTERMs before the load
SIGNAL_START = 1.5  # seconds into the measured load before the first SIGTERM
GAP = (0.015, 0.025)  # seconds between two SIGTERMs (random, ~20 ms)
SIGNAL_TIMEOUT = 2.0  # a SIGTERM not seen by then counts as lost
RPS_TARGET = 4000.0
P99_LIMIT_MS = 40.0
SIGNAL_P99_LIMIT_US = 5000.0

XMLRPC_BODY = (
    '<?xml version="1.0"?><methodCall><methodName>supervisor.getProcessInfo</methodName>'
    "<params><param><value><string>{name}</string></value></param></params></methodCall>"
)
WRK_POST = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/xml"
wrk.body = {body}
"""

# wrk prints durations with these units (stats.c / units.c: us, ms, s, m, h).
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise BenchError(f"unexpected wrk duration {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float | int]:
    """Requests/sec, the 99% latency (ms), the request count and the error counts of wrk's output."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)\s*$", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)\s*$", out, re.M)
    total = re.search(r"^\s+(\d+) requests in ", out, re.M)
    if rps is None or p99 is None or p50 is None or total is None:
        raise BenchError(f"cannot parse wrk's output:\n{out}")
    bad = re.search(r"^\s+Non-2xx or 3xx responses:\s+(\d+)\s*$", out, re.M)
    sock = re.search(r"^\s+Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out, re.M)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _duration_ms(p50.group(1)),
        "p99_ms": _duration_ms(p99.group(1)),
        "requests": int(total.group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
    }


def _wrk(url: str, seconds: int, script: str | None) -> subprocess.Popen[str]:
    argv = [WRK, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", script]
    return subprocess.Popen(
        [*argv, url], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(wrk: subprocess.Popen[str], seconds: int) -> str:
    try:
        out, _ = wrk.communicate(timeout=seconds + 15)
    except subprocess.TimeoutExpired:
        wrk.kill()
        wrk.communicate()
        raise BenchError("wrk did not finish") from None
    if wrk.returncode != 0:
        raise BenchError(f"wrk exited with {wrk.returncode}:\n{out}")
    return out


def _load(url: str, script: str | None) -> str:
    """WARMUP seconds of load (discarded), then DURATION seconds measured: wrk's output."""
    _finish(_wrk(url, WARMUP, script), WARMUP)
    return _finish(_wrk(url, DURATION, script), DURATION)


def _request(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "text/xml"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status), bytes(resp.read())


def _ping(r: Running) -> float | None:
    """One SIGTERM to espm; the forwarding latency in microseconds, or None if never seen."""
    t0 = time.monotonic_ns()
    os.kill(r.manager, signal.SIGTERM)
    try:
        t1 = r.lines.stamp(SIGNAL_TIMEOUT)
    except BenchError:
        return None
    return (t1 - t0) / 1000


@dataclass
class Load:
    """One server under wrk: the parsed figures and wrk's output, and for espm the SIGTERMs."""

    wrk: dict[str, float | int]
    output: str
    signal_us: list[float] = field(default_factory=list)
    signal_lost: int = 0
    signal_seconds: float = 0.0
    exit_code: int | None = None


def _espm(ctx: Context, signals: int, pid1: bool) -> Load:
    port = free_port()
    env = espm_env(PM_HTTP_PORT=str(port))
    url = f"http://127.0.0.1:{port}/es/status"
    r = Running("espm", [ctx.helper.path, "sig"], pid1=pid1, env=env)
    try:
        r.ready(15)
        wait_for(lambda: r.proc.poll() is not None or listening(port), 15, f"espm's API on port {port}")
        if r.proc.poll() is not None:
            raise BenchError(f"espm exited with {r.proc.returncode}\n{r.stderr()}")
        status, body = _request(url)
        doc = json.loads(body)
        if status != 200 or doc.get("state") != "started":
            raise BenchError(f"GET /es/status answered {status} {body[:200]!r}")
        rng = random.Random(1)
        for _ in range(SIGNAL_WARMUP):
            if _ping(r) is None:
                raise BenchError(f"SIGTERM not forwarded to the child\n{r.stderr()}")
            time.sleep(rng.uniform(*GAP))

        _finish(_wrk(url, WARMUP, None), WARMUP)
        wrk = _wrk(url, DURATION, None)
        samples: list[float] = []
        lost = 0
        try:
            time.sleep(SIGNAL_START)
            t_first = time.monotonic()
            for _ in range(signals):
                us = _ping(r)
                if us is None:
                    lost += 1
                else:
                    samples.append(us)
                time.sleep(rng.uniform(*GAP))
            signal_seconds = time.monotonic() - t_first
            still = wrk.poll() is None
        finally:
            out = _finish(wrk, DURATION)
        if not still:
            raise BenchError("the SIGTERMs outlasted the load: lower SIGNALS or raise DURATION")
        # SIGINT is forwarded, the child dies of it, espm exits with 130.
        code = r.stop(signal.SIGINT)
        return Load(parse_wrk(out), out, samples, lost, signal_seconds, code)
    finally:
        r.kill()


def _supervisord() -> Load:
    with tempfile.TemporaryDirectory(prefix="espm-bench-supervisord-") as tmp:
        port = free_port()
        conf = os.path.join(tmp, "supervisord.conf")
        with open(conf, "w") as f:
            f.write(SUPERVISORD_CONF.format(dir=tmp, port=port, command="sleep 600"))
        body = XMLRPC_BODY.format(name="sleep")
        script = os.path.join(tmp, "getprocessinfo.lua")
        with open(script, "w") as f:
            f.write(WRK_POST.format(body=json.dumps(body)))  # a JSON string is a valid Lua string here
        url = f"http://127.0.0.1:{port}/RPC2"
        proc = subprocess.Popen(
            [SUPERVISORD, "-c", conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for(lambda: proc.poll() is not None or listening(port), 15, f"supervisord on port {port}")
            if proc.poll() is not None:
                raise BenchError(f"supervisord exited with {proc.returncode}")

            def running() -> bool:
                status, answer = _request(url, body.encode())
                return status == 200 and b"<string>RUNNING</string>" in answer

            wait_for(running, 10, "supervisord's program RUNNING", interval=0.05)
            out = _load(url, script)
            return Load(parse_wrk(out), out)
        finally:
            kill_tree(proc)


def run(ctx: Context) -> Result:
    result = Result(NAME)
    if not os.path.exists(WRK):
        raise BenchError(f"wrk not found ({WRK}); Debian package wrk")
    signals = ctx.runs.get(NAME, SIGNALS)
    pid1 = os.geteuid() == 0
    espm = _espm(ctx, signals, pid1)
    sup = _supervisord()
    e, s = espm.wrk, sup.wrk
    sig = summary(espm.signal_us)
    lost = espm.signal_lost
    result.details = {
        "connections": CONNECTIONS,
        "duration_s": DURATION,
        "espm_pid1": pid1,
        "espm": vars(espm),
        "supervisord": vars(sup),
        "signal_stats_us": sig,
    }
    ratio = e["rps"] / s["rps"]
    result.rows = [
        Row(
            "requests/s",
            "",
            {"espm": e["rps"], "supervisord": s["rps"]},
            f">= {RPS_TARGET:g} ({ratio:.2f}x supervisord)",
            e["rps"] >= RPS_TARGET,
        ),
        Row("median latency", "ms", {"espm": e["p50_ms"], "supervisord": s["p50_ms"]}),
        Row(
            "p99 latency",
            "ms",
            {"espm": e["p99_ms"], "supervisord": s["p99_ms"]},
            f"< {P99_LIMIT_MS:g} ms",
            e["p99_ms"] < P99_LIMIT_MS,
        ),
        Row(
            "non-2xx responses",
            "",
            {"espm": e["non_2xx"], "supervisord": s["non_2xx"]},
            "0",
            e["non_2xx"] == 0,
        ),
        Row(
            "socket errors",
            "",
            {"espm": e["socket_errors"], "supervisord": s["socket_errors"]},
            "0",
            e["socket_errors"] == 0,
        ),
        Row("SIGTERM under load, median", "us", {"espm": sig["median"]}),
        Row(
            "SIGTERM under load, p99",
            "us",
            {"espm": sig["p99"]},
            f"< {SIGNAL_P99_LIMIT_US:g} us",
            sig["p99"] < SIGNAL_P99_LIMIT_US,
        ),
    ]
    if lost:
        result.rows.append(Row("SIGTERMs lost", "", {"espm": lost}, "0", False))
    result.notes.append(
        f"{len(espm.signal_us)} SIGTERMs over {espm.signal_seconds:.1f} s of the espm load "
        f"(max {sig['max']:.0f} us); espm {'as PID 1' if pid1 else 'not PID 1 (not root)'}"
    )
    if espm.exit_code != 130:
        result.notes.append(f"espm exited with {espm.exit_code} after SIGINT (expected 130)")
    return result
