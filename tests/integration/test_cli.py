"""The command line: help, version, the two script names, flags over variables, the client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from espm import __version__
from espm.config import VARIABLES
from tests.conftest import PYTHON, base_env, free_port

SCRIPTS = Path(sys.executable).parent


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=base_env(**env), capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("program", [[PYTHON, "-m", "espm"], ["espm"], ["process-manager"]])
def test_help_lists_every_variable_with_its_default(program: list[str]) -> None:
    if program[0] != PYTHON:
        program = [shutil.which(program[0], path=str(SCRIPTS)) or program[0]]
    proc = run([*program, "--help"])
    assert proc.returncode == 0
    for v in VARIABLES:
        line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(v.name + " "))
        assert f"default: {v.default or '(empty)'}" in line


def test_version() -> None:
    proc = run([PYTHON, "-m", "espm", "--version"])
    assert proc.returncode == 0 and proc.stdout.strip() == f"espm {__version__}"


def test_run_help_lists_a_flag_per_variable() -> None:
    proc = run([PYTHON, "-m", "espm", "run", "--help"])
    for v in VARIABLES:
        assert v.flag in proc.stdout


def test_flag_wins_over_variable(espm) -> None:
    port = free_port()
    m = espm(
        ["sleep", "30"],
        args=[f"--pm-http-port={port}", "--pm-proc-name", "search"],
        env=base_env(PM_HTTP_PORT="1", PM_PROC_NAME="es"),
    )
    m.port = port
    m.name = "search"
    m.wait_api()
    assert m.status()["name"] == "search"


def test_run_subcommand_is_the_default(espm) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "run", "--pm-http-port", "0", "--", "sh", "-c", "exit 9"],
        env=base_env(),
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 9


def test_client_commands_against_a_running_manager(espm) -> None:
    m = espm(["sleep", "30"])
    m.wait_api()
    client_env = {"PM_HTTP_PORT": str(m.port)}
    proc = run([PYTHON, "-m", "espm", "status"], **client_env)
    assert proc.returncode == 0 and proc.stdout.startswith("es  started  since ")
    proc = run([PYTHON, "-m", "espm", "status", "--json"], **client_env)
    assert proc.returncode == 0 and '"state": "started"' in proc.stdout
    proc = run([PYTHON, "-m", "espm", "stop", "--url", f"http://127.0.0.1:{m.port}"])
    assert proc.returncode == 0 and "stopping" in proc.stdout
    proc = run([PYTHON, "-m", "espm", "keystore"], **client_env)
    assert proc.returncode == 1 and "keystore updater is off" in proc.stderr
    proc = run([PYTHON, "-m", "espm", "status", "--url", f"http://127.0.0.1:{free_port()}"])
    assert proc.returncode == 3 and "cannot reach the manager" in proc.stderr


def test_client_error_answer_exits_1(espm, tmp_path) -> None:
    m = espm(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
    m.wait_api()
    assert run([PYTHON, "-m", "espm", "stop"], PM_HTTP_PORT=str(m.port)).returncode == 0
    proc = run([PYTHON, "-m", "espm", "start"], PM_HTTP_PORT=str(m.port))
    assert proc.returncode == 1 and "HTTP 500" in proc.stderr and "stopping" in proc.stdout


def test_logs_are_ecs_json_lines_and_the_childs_output_passes_untouched() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 4"],
        env=base_env(PM_HTTP_PORT="0", PM_LOG_LEVEL="info"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 4
    assert proc.stdout == "to-stdout\n"
    lines = proc.stderr.splitlines()
    assert "to-stderr" in lines
    records = [json.loads(line) for line in lines if line != "to-stderr"]
    assert records
    for record in records:
        assert {"@timestamp", "log.level", "message", "ecs.version", "log.logger"} <= set(record)
        assert record["@timestamp"].endswith("Z") and record["log.level"] in ("info", "warning", "error")
    assert any(r["message"] == "process ended (exit 4)" and r["process.exit_code"] == 4 for r in records)


def test_text_logs_for_people_and_the_level_filter() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "--", "sh", "-c", "exit 0"],
        env=base_env(PM_HTTP_PORT="0", PM_LOG_FORMAT="text", PM_LOG_LEVEL="warning"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0 and proc.stderr == ""  # nothing at warning level happened
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "--", "sh", "-c", "exit 0"],
        env=base_env(PM_HTTP_PORT="0", PM_LOG_FORMAT="text", PM_LOG_LEVEL="info"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert " INFO    process ended (exit 0)" in proc.stderr and "{" not in proc.stderr


def test_the_demo_runs_end_to_end() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "demo", "--tool-delay", "0.1"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert '"ready": true' in out
    assert "keystore updated and secure settings reloaded in" in out
    assert '"reloads": 2' in out and '"state": "stopped"' in out
    assert "espm exited with 0" in out
    assert "Traceback" not in proc.stderr
