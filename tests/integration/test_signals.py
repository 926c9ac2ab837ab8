"""Signal forwarding: every catchable signal reaches the child and its group, as PID 1 and not."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading

from tests.conftest import PYTHON, base_env, fixture, proc_state, wait_for

# Every signal 1..31 but the uncatchable ones and the manager's own SIGCHLD.
MATRIX = [
    s for s in signal.valid_signals() if s <= 31 and s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD)
]


def test_every_signal_reaches_child_and_grandchild(espm, pid1: bool) -> None:
    m = espm(["python3", fixture("sigrecorder.py"), "--grandchild"], pid1=pid1)
    assert m.readline() == "child ready"
    for sig in MATRIX:
        name = signal.Signals(sig).name
        m.signal(sig)
        try:
            got = {m.readline(), m.readline()}
        except AssertionError as err:
            said = [r["message"] for r in forwarded_records(m)]
            raise AssertionError(f"after {name}: {err}; the manager said: {said}") from None
        assert got == {f"child {name}", f"grandchild {name}"}, f"after {name}"
    # The job-control signals were forwarded and the manager itself never stopped.
    assert proc_state(m.pid) != "T"
    assert m.proc.poll() is None
    # Each forwarded signal is also accounted for in the log, once.
    wait_for(lambda: len(forwarded_records(m)) >= len(MATRIX))
    assert len(forwarded_records(m)) == len(MATRIX)


def forwarded_records(m) -> list[dict]:
    return [r for r in m.read_logs(0.05) if str(r.get("message", "")).startswith("forwarded")]


def test_forwarded_signals_in_order_under_a_burst(espm) -> None:
    m = espm(["python3", fixture("sigrecorder.py")])
    assert m.readline() == "child ready"
    for _ in range(50):
        m.signal(signal.SIGUSR1)
        assert m.readline() == "child SIGUSR1"


def test_sigterm_ends_child_and_manager_with_its_status(espm, pid1: bool) -> None:
    m = espm(["python3", fixture("sigrecorder.py"), "--exit-on-term"], pid1=pid1)
    assert m.readline() == "child ready"
    m.signal(signal.SIGTERM)
    assert m.wait() == 143


def test_term_with_no_process_exits_zero(espm, tmp_path, pid1: bool) -> None:
    # A state file that records an operator's stop: the manager waits without a process.
    state = tmp_path / "state.json"
    state.write_text('{"state": "stopped", "since": "2026-01-01T00:00:00.000Z"}')
    marker = tmp_path / "started"
    m = espm(["touch", str(marker)], pid1=pid1, env=base_env(PM_STATE_FILE=str(state)))
    m.wait_api()
    m.signal(signal.SIGUSR1)
    m.wait_log("SIGUSR1 dropped")
    assert m.proc.poll() is None
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    assert not marker.exists()


def test_sigkill_to_manager_kills_child(espm) -> None:
    m = espm(["python3", fixture("sigrecorder.py")])
    assert m.readline() == "child ready"
    m.wait_api()
    child = m.status()["pid"]
    m.signal(signal.SIGKILL)
    m.wait()
    wait_for(lambda: proc_state(child) in (None, "Z"), timeout=5)


class HeldInStartUp:
    """espm held in its start-up window (every signal blocked, no handler yet), on purpose.

    Its stderr is a pipe filled up beforehand, and a state file recording `failed` makes it log
    one line before it installs its handlers: that write blocks until `release()` drains the
    pipe. No race: a signal sent meanwhile must wait, pending, for its handler.
    """

    def __init__(self, tmp_path, command: list[str]) -> None:
        state = tmp_path / "espm.json"
        state.write_text('{"state": "failed", "since": "2026-01-01T00:00:00.000Z"}')
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(write, b"-" * 512)
        os.set_blocking(write, True)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "espm", "--", *command],
            env=base_env(PM_HTTP_PORT="0", PM_STATE_FILE=str(state)),
            stdout=subprocess.PIPE,
            stderr=write,
        )
        os.close(write)
        self.stderr = b""
        wait_for(lambda: wchan(self.proc.pid).endswith("pipe_write"))  # e.g. anon_pipe_write
        assert blocked(self.proc.pid) >= {signal.SIGTERM, signal.SIGUSR1}  # the window, for sure

    def release(self) -> None:
        """Drain espm's stderr from now on (in a thread, until espm closes it)."""

        def drain() -> None:
            while chunk := os.read(self._read, 65536):
                self.stderr += chunk
            os.close(self._read)

        self._drainer = threading.Thread(target=drain)
        self._drainer.start()

    def close(self) -> str:
        """Kill espm if it still runs; its stderr, less the filler."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        self._drainer.join()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.stderr.decode(errors="replace").lstrip("-")


def wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except OSError:
        return ""


def blocked(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def test_a_signal_during_start_up_is_not_lost(tmp_path) -> None:
    # SIGTERM while espm is still starting (its signals blocked, no process yet) waits for its
    # handler, then ends the manager with 0 before anything is started. Lost, espm would run on
    # with `sleep`; delivered at its default action, espm would die of it (-15).
    marker = tmp_path / "started"
    held = HeldInStartUp(tmp_path, ["sh", "-c", f"touch {marker}; exec sleep 60"])
    os.kill(held.proc.pid, signal.SIGTERM)
    held.release()
    try:
        assert held.proc.wait(10) == 0
    finally:
        stderr = held.close()
    assert not marker.exists()
    assert "SIGTERM with no process running: exiting" in stderr


def test_a_default_fatal_signal_during_start_up_does_not_kill_espm(tmp_path) -> None:
    held = HeldInStartUp(tmp_path, ["python3", fixture("sigrecorder.py")])
    os.kill(held.proc.pid, signal.SIGUSR1)  # its default action would end espm
    held.release()
    try:
        assert held.proc.stdout is not None
        assert held.proc.stdout.readline() == b"child ready\n"
        assert held.proc.poll() is None
    finally:
        stderr = held.close()
    assert "SIGUSR1 dropped: no process to forward it to" in stderr


def test_a_sigpipe_espm_raises_on_itself_is_not_forwarded(tmp_path) -> None:
    # espm's stderr is a pipe whose reader goes away: its next log line fails with EPIPE, and
    # the kernel raises SIGPIPE on espm itself. That one is espm's business, not the child's
    # (forwarded, it would come back as another log line, another EPIPE: a storm). A SIGPIPE
    # sent by someone else is still forwarded.
    import http.client
    import subprocess

    from tests.conftest import PYTHON, base_env, free_port

    port = free_port()
    manager = subprocess.Popen(
        [PYTHON, "-m", "espm", "--", PYTHON, fixture("sigrecorder.py")],
        env=base_env(PM_HTTP_PORT=str(port), PM_LOG_LEVEL="debug"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def loop_turn() -> None:
        """An answer from the API: the loop has run what was queued before (the logging)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()

    try:
        assert manager.stdout is not None and manager.stderr is not None
        assert manager.stdout.readline() == b"child ready\n"
        while b"API listening" not in manager.stderr.readline():
            pass
        manager.stderr.close()  # nobody reads espm's logs any more
        for _ in range(3):
            os.kill(manager.pid, signal.SIGUSR1)  # forwarded, then logged: EPIPE, SIGPIPE on espm
            assert manager.stdout.readline() == b"child SIGUSR1\n"
            loop_turn()
        loop_turn()  # the signalfd that holds espm's own SIGPIPEs was read by now
        os.kill(manager.pid, signal.SIGUSR2)
        # Had espm forwarded its own SIGPIPEs, the child would have reported them first.
        assert manager.stdout.readline() == b"child SIGUSR2\n"
        os.kill(manager.pid, signal.SIGPIPE)  # someone else's: forwarded
        assert manager.stdout.readline() == b"child SIGPIPE\n"
        assert manager.poll() is None
    finally:
        manager.kill()
        manager.wait()
