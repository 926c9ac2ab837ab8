"""Signal forwarding: every catchable signal reaches the child and its group, as PID 1 and not."""

from __future__ import annotations

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
    child = m.status()["pid"]
    m.signal(signal.SIGKILL)
    m.wait()
    deadline = time.monotonic() + 5
    while proc_state(child) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc_state(child) in (None, "Z")
