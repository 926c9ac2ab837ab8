"""The manager's exit status is the process's: its code, 128+signal, and the configured mappings."""

from __future__ import annotations

import random
import signal
import subprocess

import pytest

from tests.conftest import PYTHON, base_env, free_port


def run_all(commands: list[list[str]], batch: int = 16, **env: str) -> list[int]:
    """Run one manager per command, `batch` at a time; their exit statuses in order."""
    codes: list[int] = []
    for start in range(0, len(commands), batch):
        procs = [
            subprocess.Popen(
                [PYTHON, "-m", "espm", "--", *cmd],
                env=base_env(PM_HTTP_PORT="0", PM_LOG_LEVEL="warning", **env),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for cmd in commands[start : start + batch]
        ]
        codes += [p.wait(30) for p in procs]
    return codes


# Every exit code and every signal is checked against the pure mapping (tests/unit/
# test_exit_of.py); real managers check a sample that holds every boundary of it.
BOUNDARY_CODES = [0, 1, 126, 127, 128, 129, 143, 254, 255]
SAMPLED_SIGNALS = [
    signal.SIGHUP,
    signal.SIGQUIT,  # core dump
    signal.SIGKILL,
    signal.SIGSEGV,  # core dump
    signal.SIGPIPE,  # ignored by Python, restored by the child
    signal.SIGTERM,
    signal.SIGXFSZ,  # ignored by Python, core dump
    signal.SIGSYS,  # the highest that ends a process
]


def test_a_sample_of_exit_codes_and_deaths_by_signal() -> None:
    # Each run draws 3 more codes, so the runs cover all 256 over time; the failing ones are named.
    codes = sorted({*BOUNDARY_CODES, *random.sample(range(256), 3)})
    # The child restores the default action first (Python ignores SIGPIPE and SIGXFSZ itself).
    kill_self = (
        "import os, signal, sys; s = int(sys.argv[1]); "
        "s != 9 and signal.signal(s, signal.SIG_DFL); os.kill(os.getpid(), s)"
    )
    commands = [["sh", "-c", f"exit {code}"] for code in codes]
    commands += [[PYTHON, "-c", kill_self, str(s)] for s in SAMPLED_SIGNALS]
    expected = codes + [128 + s for s in SAMPLED_SIGNALS]
    got = run_all(commands, batch=len(commands))
    assert [(e, g) for e, g in zip(expected, got, strict=True) if e != g] == []


def test_success_exit_codes_map_to_zero() -> None:
    commands = [["sh", "-c", "kill -TERM $$"], ["sh", "-c", "exit 3"], ["sh", "-c", "exit 143"]]
    assert run_all(commands, PM_SUCCESS_EXIT_CODES="143, 3") == [0, 0, 0]
    assert run_all([["sh", "-c", "exit 4"]], PM_SUCCESS_EXIT_CODES="143,3") == [4]


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["/nonexistent/elasticsearch"], 127),
        (["no-such-command-anywhere"], 127),
        (["/etc/hostname"], 126),
        (["/tmp"], 126),
    ],
)
def test_command_that_cannot_start(espm, command: list[str], code: int) -> None:
    m = espm(command)
    assert m.wait() == code
    assert m.wait_log("cannot execute")


def test_exit_status_reported_in_status_after_api_stop(espm) -> None:
    m = espm(["sleep", "30"])
    m.wait_api()
    code, doc, _ = m.request("POST", "/es/stop")
    assert code == 202 and doc["state"] == "stopping"
    m.wait_log("stopping -> stopped")
    doc = m.status()
    assert doc["state"] == "stopped"
    assert doc["exit_code"] == 128 + signal.SIGTERM
    assert doc["exit_signal"] == signal.SIGTERM
    assert doc["pid"] is None
    assert m.proc.poll() is None  # keeps serving after an API stop


def test_exit_on_stop_exits_with_mapped_status(espm) -> None:
    m = espm(
        ["sleep", "30"],
        env=base_env(PM_EXIT_ON_STOP="true", PM_SUCCESS_EXIT_CODES="143", PM_HTTP_PORT=str(free_port())),
    )
    m.wait_api()
    assert m.request("POST", "/es/stop")[0] == 202
    assert m.wait() == 0


def test_exit_on_stop_after_kill(espm) -> None:
    m = espm(["sleep", "30"], env=base_env(PM_EXIT_ON_STOP="yes", PM_HTTP_PORT=str(free_port())))
    m.wait_api()
    assert m.request("POST", "/es/kill")[0] == 202
    assert m.wait() == 137
