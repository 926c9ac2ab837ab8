"""Shared test harness: run a real espm process (optionally as PID 1) and talk to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proctree import children, descendants, proc_state  # noqa: F401 (re-exported)

# Bytecode caching on, whatever PYTHONDONTWRITEBYTECODE says (the CI machine sets it to 1): without
# it every pytest worker rewrites and compiles every test module again (about 1.5 s of CPU each),
# and every stand-in and tool the tests start compiles its modules again at each start. Only
# __pycache__ folders are written; what a test proves does not change.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

FIXTURES = Path(__file__).parent / "fixtures"
PYTHON = sys.executable


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PM_", "KEYSTORE_"))}
    env.update(
        PM_KEYSTORE_UPDATER="false",
        PM_HTTP_HOST="127.0.0.1",
        PM_LOG_FORMAT="json",
        PM_LOG_LEVEL="debug",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


class Espm:
    """A running espm process (or `unshare` wrapping it as PID 1) with its pipes and API."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        pid1: bool = False,
        args: list[str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        preexec: Any = None,
        prefix: list[str] | None = None,
    ) -> None:
        argv = [PYTHON, "-m", "espm", *(args or []), "--", *command]
        if pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        argv = [*(prefix or []), *argv]  # e.g. a shell that mounts something, then execs espm
        self.env = env
        self.port = int(env.get("PM_HTTP_PORT", "8080"))
        self.name = env.get("PM_PROC_NAME", "es")
        # Logs go to a file, not a pipe: a test that reads no logs must not stall the manager.
        self._log_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the manager, closed in close()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            preexec_fn=preexec,
        )
        self._log_offset = 0
        self.pid1 = pid1
        self.logs: list[dict[str, Any]] = []
        self._stdout_buf = b""
        self._stderr_buf = b""

    # -- processes ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The manager's pid as seen from here (inside unshare when pid1)."""
        if not self.pid1:
            return self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.005)
        raise AssertionError("unshare did not start espm")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill the manager and everything below it; safe to call twice."""
        if self._log_file.closed:
            return
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in reversed(pids):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.read_logs(0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()

    # -- output -----------------------------------------------------------------------------

    def readline(self, timeout: float = 10) -> str:
        """The next line the managed process printed (its stdout passes through espm)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._stdout_buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from the child within {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError("the child's stdout closed")
            self._stdout_buf += chunk
        line, _, self._stdout_buf = self._stdout_buf.partition(b"\n")
        return line.decode()

    def read_logs(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Collect the log lines espm wrote so far (waiting up to `timeout` for more)."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = os.pread(self._log_file.fileno(), 1 << 20, self._log_offset)
            self._log_offset += len(chunk)
            self._stderr_buf += chunk
            if chunk or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        *lines, self._stderr_buf = self._stderr_buf.split(b"\n")
        for line in lines:
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"message": line.decode(errors="replace"), "raw": True})
        return self.logs

    def wait_log(self, pattern: str, timeout: float = 10) -> dict[str, Any]:
        """Wait for a log record whose message matches `pattern`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for record in self.logs[seen:]:
                if re.search(pattern, str(record.get("message", ""))):
                    return record
            seen = len(self.logs)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no log matching {pattern!r}; got {self.logs}")
            self.read_logs(min(left, 0.05))

    def stderr_text(self) -> str:
        self.read_logs(0)
        return "\n".join(json.dumps(r) for r in self.logs) + self._stderr_buf.decode(errors="replace")

    # -- API --------------------------------------------------------------------------------

    def wait_api(self, timeout: float = 10) -> None:
        self.wait_log("API listening", timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 10
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body)
            answer = conn.getresponse()
            raw = answer.read()
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = raw
        return answer.status, doc, answer

    def status(self) -> dict[str, Any]:
        code, doc, _ = self.request("GET", f"/{self.name}/status")
        assert code == 200
        assert isinstance(doc, dict)
        return doc


@pytest.fixture(params=[False, True], ids=["subreaper", "pid1"])
def pid1(request: pytest.FixtureRequest) -> bool:
    """The PID 1 / subreaper matrix: True runs espm as PID 1 of a new pid namespace."""
    return bool(request.param)


def _managers() -> Iterator[Any]:
    """A factory of running managers, all killed when the generator ends."""
    started: list[Espm] = []

    def start(command: list[str], pid1: bool = False, **kwargs: Any) -> Espm:
        env = kwargs.pop("env", None) or base_env()
        env.setdefault("PM_HTTP_PORT", str(free_port()))
        manager = Espm(command, env, pid1=pid1, **kwargs)
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.close()
    # Whatever the tests did, espm itself never printed a Python traceback (an asyncio
    # "Exception in callback" included): a bug that a passing assertion could hide.
    for manager in started:
        raw = [r["message"] for r in manager.logs if r.get("raw")]
        assert not [line for line in raw if "Traceback" in line or "Exception in callback" in line], raw


@pytest.fixture
def espm() -> Iterator[Any]:
    """A factory of running managers, all killed at the end of the test."""
    yield from _managers()


@pytest.fixture(scope="module")
def module_espm() -> Iterator[Any]:
    """The same, killed at the end of the module: for managers that several tests share."""
    yield from _managers()


def wait_for(predicate: Any, timeout: float = 10, interval: float = 0.005) -> Any:
    """The first true value of `predicate()`, polled from every `interval` s up to every 0.1 s
    (a poll that asks the manager costs it CPU too: four workers share two cores)."""
    deadline = time.monotonic() + timeout
    pause, cap = interval, max(interval, 0.1)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(pause)
        pause = min(pause * 1.5, cap)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A CA and a certificate for the stand-in Elasticsearch (tests/standin_es.py)."""
    from tests.standin_es import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def launch_es(tmp_path: Path, pki: Any) -> Iterator[Any]:
    """Starts stand-in Elasticsearch servers (tests/standin_es.py), all stopped at the test's end."""
    from tests.standin_es import EsLauncher

    folder = tmp_path / "standin-es"
    folder.mkdir()
    launcher = EsLauncher(folder, pki)
    try:
        yield launcher
    finally:
        launcher.stop_all()
