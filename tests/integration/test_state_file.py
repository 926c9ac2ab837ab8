"""The state file across restarts and crashes of espm: never a crash loop, never a silent loss."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import PYTHON, base_env, free_port, proc_state, wait_for

SINCE = "2026-01-01T00:00:00.000Z"


def env(state: Path, **overrides: str) -> dict[str, str]:
    return base_env(PM_HTTP_PORT=str(free_port()), PM_STATE_FILE=str(state), **overrides)


def recorded(state: Path) -> str:
    return str(json.loads(state.read_text())["state"])


@pytest.mark.parametrize(
    ("before", "after", "runs"),
    [("started", "started", True), ("stopping", "stopped", False), ("killing", "killed", False)],
)
def test_a_state_recorded_when_espm_itself_crashed(espm, tmp_path, before, after, runs) -> None:
    # espm was OOM-killed: the file still holds what it last recorded. `started` starts the
    # process again; a stop or kill whose end was not seen yet keeps it down, as its end.
    state = tmp_path / "espm.json"
    state.write_text(json.dumps({"state": before, "since": SINCE}))
    (tmp_path / ".espm.json.12345.tmp").write_text('{"sta')  # a write the crash cut short
    marker = tmp_path / "runs"
    m = espm(["sh", "-c", f"echo run >> {marker}; echo up; exec sleep 60"], env=env(state))
    if runs:
        assert m.readline() == "up"
    m.wait_api()
    doc = m.status()
    assert doc["state"] == after and (doc["pid"] is not None) is runs
    assert recorded(state) == after
    assert marker.exists() is runs
    assert not (tmp_path / ".espm.json.12345.tmp").exists()
    # Kept down, it starts on an operator's request.
    code, doc, _ = m.request("POST", "/es/start")
    assert code == 200 and doc["state"] == "started"


@pytest.mark.parametrize("kind", ["fifo", "directory", "nested", "huge", "garbage"])
def test_a_state_file_that_is_not_a_state_is_a_configuration_error(tmp_path, kind) -> None:
    state = tmp_path / "espm.json"
    if kind == "fifo":
        os.mkfifo(state)  # nobody writes it: espm used to hang here, deaf to SIGTERM
    elif kind == "directory":
        state.mkdir()
    elif kind == "nested":
        state.write_text("[" * 3000)
    elif kind == "huge":
        state.write_bytes(json.dumps({"state": "stopped", "pad": "x" * (1 << 20)}).encode())
    else:
        state.write_bytes(os.urandom(64))
    marker = tmp_path / "started"
    done = subprocess.run(
        [PYTHON, "-m", "espm", "--", "touch", str(marker)],
        env=env(state),
        capture_output=True,
        timeout=10,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"espm: PM_STATE_FILE='{state}': "), lines
    assert not marker.exists()


def test_sigkill_at_random_points_never_keeps_the_next_manager_down(espm, tmp_path) -> None:
    # Each manager is hammered with stops, starts and kills (a state write each) and SIGKILLed
    # at a random moment. Whatever the file holds then, the next manager comes up and acts on it.
    state = tmp_path / "espm.json"
    rng = random.Random(8)
    seen: set[str] = set()
    m = espm(["sleep", "60"], env=env(state))
    m.wait_api()
    for _ in range(10):
        stop = threading.Event()

        def hammer(m=m, stop=stop) -> None:
            paths = ["/es/stop", "/es/start", "/es/kill", "/es/start"]
            i = 0
            while not stop.is_set():
                try:
                    m.request("POST", paths[i % len(paths)], timeout=2)
                except (OSError, http.client.HTTPException):
                    return  # the manager is gone
                i += 1

        worker = threading.Thread(target=hammer)
        worker.start()
        threading.Event().wait(rng.uniform(0.02, 0.3))
        m.signal(signal.SIGKILL)
        m.wait()
        stop.set()
        worker.join()
        left = recorded(state)  # parses: never half written
        seen.add(left)
        m = espm(["sleep", "60"], env=env(state))
        m.wait_api()
        assert os.listdir(tmp_path) == ["espm.json"]  # a write the kill cut short left nothing
        doc = m.status()
        expected = {"stopping": "stopped", "killing": "killed", "stopped": "stopped", "killed": "killed"}
        assert doc["state"] == expected.get(left, "started"), (left, doc)
        assert (doc["pid"] is None) is (left in expected)
    assert len(seen) > 1  # the kills did land in different states


def test_a_stop_that_cannot_be_recorded_is_not_passed_as_done(espm, tmp_path) -> None:
    # The state file lives on a real 64 KiB tmpfs (mounted in espm's own mount namespace),
    # which the test fills up before an operator's stop.
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = 'mount -t tmpfs -o size=64k espm-test "$0" && exec "$@"'
    state = disk / "espm.json"
    m = espm(
        ["sh", "-c", "trap 'exit 143' TERM; echo ready; while :; do sleep 0.05; done"],
        env=env(state),
        prefix=["unshare", "--mount", "sh", "-c", mount, str(disk)],
    )
    assert m.readline() == "ready"
    m.wait_api()
    seen = Path(f"/proc/{m.pid}/root") / disk.relative_to("/")  # the tmpfs, as espm sees it
    assert recorded(seen / "espm.json") == "started"
    assert not (disk / "espm.json").exists()  # the test's own view: the mount is espm's alone
    filler = seen / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)

    code, doc, _ = m.request("POST", "/es/stop")
    assert code == 202 and doc["state"] == "stopping"
    assert doc["warning"] == (
        "the state file cannot be written (No space left on device): it still holds started, "
        "and a restart of espm would start the process, not keep it stopped"
    )
    wait_for(lambda: m.status()["state"] == "stopped")
    assert m.status()["warning"] == doc["warning"]
    # Not a 500: a failed liveness probe would restart espm, which would start what was stopped.
    code, health, _ = m.request("GET", "/health")
    assert code == 200 and health["status"] == "warning" and "still holds started" in health["reason"]
    assert recorded(seen / "espm.json") == "started"
    assert sorted(os.listdir(seen)) == ["espm.json", "filler"]  # no temporary left behind

    # Started again, the process agrees with the file again: a restart would do the same.
    code, doc, _ = m.request("POST", "/es/start")
    assert code == 200 and doc["state"] == "started" and "warning" not in doc
    assert m.request("GET", "/health")[1] == {"status": "ok"}
    assert m.readline() == "ready"
    assert "warning" in m.request("POST", "/es/stop")[1]
    wait_for(lambda: m.status()["state"] == "stopped")

    filler.unlink()  # space comes back: the stop is recorded within a second or so
    wait_for(lambda: recorded(seen / "espm.json") == "stopped", timeout=5)
    wait_for(lambda: "warning" not in m.status())
    assert m.request("GET", "/health")[1] == {"status": "ok"}
    assert m.proc.poll() is None and proc_state(m.pid) is not None
