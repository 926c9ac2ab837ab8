"""Signal forwarding: every catchable signal reaches the child and its group, as PID 1 and not."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import base_env, fixture, proc_state, wait_for

# Every signal 1..31 but the uncatchable ones and the manager's own SIGCHLD.
MATRIX = [
    s for s in signal.valid_signals() if s <= 31 and s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD)
]


@pytest.mark.parametrize("pid1", [False, True], ids=["subreaper", "pid1"])
def test_every_signal_reaches_child_and_grandchild(espm, pid1: bool) -> None:
    m = espm(["python3", fixture("sigrecorder.py"), "--grandchild"], pid1=pid1)
    assert m.readline() == "child ready"
    for sig in MATRIX:
        m.signal(sig)
        got = {m.readline(), m.readline()}
        name = signal.Signals(sig).name
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


@pytest.mark.parametrize("pid1", [False, True], ids=["subreaper", "pid1"])
def test_sigterm_ends_child_and_manager_with_its_status(espm, pid1: bool) -> None:
    m = espm(["python3", fixture("sigrecorder.py"), "--exit-on-term"], pid1=pid1)
    assert m.readline() == "child ready"
    m.signal(signal.SIGTERM)
    assert m.wait() == 143


@pytest.mark.parametrize("pid1", [False, True], ids=["subreaper", "pid1"])
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
    deadline = time.monotonic() + 5
    while proc_state(child) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc_state(child) in (None, "Z")


def _wait_until_signals_blocked(pid: int, timeout: float = 10) -> bool:
    """Spin until the manager has blocked SIGUSR1 and SIGTERM (the start-up window)."""
    want = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGTERM - 1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("SigBlk:"):
                        if int(line.split()[1], 16) & want == want:
                            return True
                        break
        except OSError:
            return False
    return False


def test_a_signal_during_start_up_is_not_lost(espm, tmp_path) -> None:
    # SIGTERM while espm is still starting (its signals blocked, no process yet) waits for its
    # handler, then ends the manager with 0 before anything is started. Had the window closed
    # already, it would reach the child (143). Lost, espm would run on with `sleep`.
    codes = []
    for attempt in range(5):
        marker = tmp_path / f"started{attempt}"
        m = espm(["sh", "-c", f"touch {marker}; exec sleep 60"])
        assert _wait_until_signals_blocked(m.proc.pid)
        os.kill(m.proc.pid, signal.SIGTERM)
        code = m.wait()
        assert code in (0, 143)
        if code == 0:
            assert not marker.exists()
            m.wait_log("SIGTERM with no process running: exiting")
        codes.append(code)
    assert 0 in codes  # the start-up window was hit at least once


def test_a_default_fatal_signal_during_start_up_does_not_kill_espm(espm) -> None:
    m = espm(["python3", fixture("sigrecorder.py")])
    assert _wait_until_signals_blocked(m.proc.pid)
    os.kill(m.proc.pid, signal.SIGUSR1)  # its default action would end espm
    assert m.readline() == "child ready"
    assert m.proc.poll() is None
    m.read_logs(0.2)
    assert any("SIGUSR1" in str(r.get("message")) for r in m.logs)


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
        time.sleep(0.1)
        os.kill(manager.pid, signal.SIGUSR2)
        # Had espm forwarded its own SIGPIPEs, the child would have reported them first.
        assert manager.stdout.readline() == b"child SIGUSR2\n"
        os.kill(manager.pid, signal.SIGPIPE)  # someone else's: forwarded
        assert manager.stdout.readline() == b"child SIGPIPE\n"
        assert manager.poll() is None
    finally:
        manager.kill()
        manager.wait()
