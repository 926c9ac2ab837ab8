"""What every benchmark shares: the C helper, the managers under test, /proc, statistics.

Stdlib only. Every timestamp is CLOCK_MONOTONIC in nanoseconds (`time.monotonic_ns()` here,
`clock_gettime(CLOCK_MONOTONIC)` in the C helper), so the two sides compare directly.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The /proc helpers are shared with the tests.
sys.path.insert(0, str(ROOT))
from tests.proctree import children as children  # noqa: E402 (re-exported)
from tests.proctree import descendants as descendants  # noqa: E402
from tests.proctree import proc_state as proc_state  # noqa: E402

PYTHON = sys.executable
TINI = shutil.which("tini") or "/usr/bin/tini"
DUMB_INIT = shutil.which("dumb-init") or "/usr/bin/dumb-init"
SUPERVISORD = shutil.which("supervisord") or "/usr/bin/supervisord"
UNSHARE_PID1 = ["unshare", "--pid", "--fork", "--mount-proc"]

MANAGERS = ("espm", "tini", "dumb-init")
# The floor of any Python manager: the same interpreter, with the same site-packages, that only
# forks the child, execs it and waits for it.
PYTHON_FLOOR = (
    "import os, sys\npid = os.fork()\nif pid == 0: os.execvp(sys.argv[1], sys.argv[1:])\nos.waitpid(pid, 0)"
)


# -- the C helper ---------------------------------------------------------------------------


class Helper:
    """bench/helper.c compiled into a temporary directory, removed at the end of the run."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._path: str | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._dir = tempfile.TemporaryDirectory(prefix="espm-bench-")
            out = os.path.join(self._dir.name, "helper")
            cc = os.environ.get("CC", "cc")
            subprocess.run([cc, "-O2", "-Wall", "-o", out, str(HERE / "helper.c")], check=True)
            self._path = out
        return self._path

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()


# -- the managers under test ------------------------------------------------------------------


def espm_env(**overrides: str) -> dict[str, str]:
    """The environment without the caller's PM_*/KEYSTORE_*, with the benchmark settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PM_", "KEYSTORE_"))}
    env.update(
        PM_KEYSTORE_UPDATER="false",
        PM_HTTP_PORT="0",
        PM_HTTP_HOST="127.0.0.1",
        PM_LOG_LEVEL="warning",
    )
    env.update(overrides)
    # The editable install finds src/ by itself; this keeps a plain checkout working too.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


# More managers by name: the command line before `-- CHILD...` (bench_standalone adds the
# standalone executables here).
EXTRA_MANAGERS: dict[str, list[str]] = {}


def manager_argv(name: str, child: Sequence[str], pid1: bool) -> list[str]:
    """The command line that runs `child` under manager `name`, as PID 1 or not."""
    if name in EXTRA_MANAGERS:
        argv = [*EXTRA_MANAGERS[name], "--", *child]
    elif name == "espm":
        argv = [PYTHON, "-m", "espm", "--", *child]
    elif name == "tini":
        # Not PID 1, tini needs -s (child subreaper) to reap as it would as PID 1.
        argv = [TINI, "--", *child] if pid1 else [TINI, "-s", "--", *child]
    elif name == "dumb-init":
        argv = [DUMB_INIT, *child]
    elif name == "python":
        argv = [PYTHON, "-c", PYTHON_FLOOR, *child]
    else:
        raise ValueError(name)
    return [*UNSHARE_PID1, *argv] if pid1 else argv


# -- /proc ------------------------------------------------------------------------------------


def spawn(
    argv: Sequence[str], env: dict[str, str] | None, stderr: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """`argv` in a session of its own (for kill_tree), stdin and stdout on /dev/null, stderr too
    unless given."""
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process and everything below it (deepest first), then reap it."""
    for pid in reversed([proc.pid, *descendants(proc.pid)]):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def kib(value: str) -> int:
    """'12345 kB' -> 12345."""
    return int(value.split()[0])


def listening(port: int) -> bool:
    """True when something listens on TCP `port` (IPv4 or IPv6), from /proc/net."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1].endswith(want) and parts[3] == "0A":
                    return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class BenchError(Exception):
    pass


# -- a running manager --------------------------------------------------------------------------


class Lines:
    """Lines from a pipe, read with a timeout (no buffering surprises: raw os.read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no line within {timeout:g}s (have {self.buf[-200:]!r})")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise BenchError(f"EOF while waiting for a line (have {self.buf[-200:]!r})")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")

    def stamp(self, timeout: float) -> int:
        """The next "T <ns>" line's timestamp (other lines are skipped)."""
        while True:
            line = self.readline(timeout)
            if line.startswith("T "):
                return int(line[2:])


class Running:
    """A manager started with pipes for the child's stdin and stdout, in its own session."""

    def __init__(self, name: str, child: Sequence[str], pid1: bool, env: dict[str, str]) -> None:
        self.name = name
        self.pid1 = pid1
        self.argv = manager_argv(name, child, pid1)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in kill())
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.lines = Lines(self.proc.stdout.fileno())
        self._manager: int | None = None

    @property
    def manager(self) -> int:
        """The manager's host pid: unshare's child when PID 1 in a namespace, else the process."""
        if self._manager is None:
            if not self.pid1:
                self._manager = self.proc.pid
            else:
                kids = wait_for(lambda: children(self.proc.pid), 10, f"{self.name} under unshare")
                self._manager = kids[0]
        return self._manager

    def child(self) -> int:
        """The managed child's host pid (the manager's first child)."""
        kids = wait_for(lambda: children(self.manager), 10, f"the child of {self.name}")
        return int(kids[0])

    def ready(self, timeout: float) -> None:
        """Wait for the child's "ready" line; on failure, say what the manager printed."""
        try:
            line = self.lines.readline(timeout)
        except BenchError as err:
            raise BenchError(f"{self.name}: {err}\n{self.stderr()}") from None
        if line != "ready":
            raise BenchError(f"{self.name}: expected 'ready', got {line!r}\n{self.stderr()}")

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def stop(self, signum: int = signal.SIGINT, timeout: float = 5.0) -> int | None:
        """Send `signum` to the manager (forwarded: the child ends, then the manager)."""
        code: int | None = None
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(self.manager, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout)
        else:
            code = self.proc.returncode
        self.kill()
        return code

    def kill(self) -> None:
        """Leave nothing behind, whatever state it is in."""
        for pid in reversed([self.proc.pid, *descendants(self.proc.pid)]):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._stderr.close()


@contextlib.contextmanager
def running(name: str, child: Sequence[str], pid1: bool, env: dict[str, str]) -> Iterator[Running]:
    r = Running(name, child, pid1, env)
    try:
        yield r
    finally:
        r.kill()


# -- figures ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


@dataclass
class Row:
    """One line of the final table: one figure per manager, and the verdict on its target."""

    metric: str
    unit: str
    values: dict[str, float | int | None]
    target: str = ""
    passed: bool | None = None  # None: no target on this row


@dataclass
class Result:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(r.passed is not False for r in self.rows)


@dataclass
class Context:
    helper: Helper
    verbose: bool = False
    runs: dict[str, int] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(message, flush=True)
