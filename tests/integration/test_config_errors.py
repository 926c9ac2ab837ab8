"""Every configuration error stops the manager before it starts anything: exit 2, one clear line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, base_env, free_port


def run_espm(tmp_path: Path, args: list[str] | None = None, **env: str) -> tuple[int, str, Path]:
    marker = tmp_path / "started"
    proc = subprocess.run(
        [PYTHON, "-m", "espm", *(args or []), "--", "touch", str(marker)],
        env=base_env(**{"PM_HTTP_PORT": "0", **env}),
        capture_output=True,
        timeout=20,
    )
    return proc.returncode, proc.stderr.decode(), marker


def executable(tmp_path: Path) -> str:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    return str(tool)


CASES = [
    ({"PM_HTTP_PORT": "http"}, "PM_HTTP_PORT='http': expected a port number 0-65535"),
    ({"PM_HTTP_PORT": "70000"}, "PM_HTTP_PORT='70000'"),
    ({"PM_REAPER": "maybe"}, "PM_REAPER='maybe': expected true/false, 1/0, yes/no or on/off"),
    ({"PM_TLS": "2"}, "PM_TLS='2'"),
    ({"PM_EXP_VARS": "enabled"}, "PM_EXP_VARS='enabled'"),
    ({"PM_PROFILER": "x"}, "PM_PROFILER='x'"),
    ({"PM_METRICS": "x"}, "PM_METRICS='x'"),
    ({"PM_EXIT_ON_STOP": "sure"}, "PM_EXIT_ON_STOP='sure'"),
    ({"PM_KEYSTORE_UPDATER": "nope"}, "PM_KEYSTORE_UPDATER='nope'"),
    ({"PM_PROC_NAME": "my es"}, "PM_PROC_NAME='my es': expected letters"),
    ({"PM_PROC_NAME": "health"}, "PM_PROC_NAME='health'"),
    ({"PM_STOP_TIMEOUT": "-1"}, "PM_STOP_TIMEOUT='-1': expected a number of seconds above 0"),
    ({"PM_STOP_TIMEOUT": "soon"}, "PM_STOP_TIMEOUT='soon'"),
    ({"PM_SUCCESS_EXIT_CODES": "143,abc"}, "PM_SUCCESS_EXIT_CODES='143,abc'"),
    ({"PM_SUCCESS_EXIT_CODES": "300"}, "300 is outside 0-255"),
    ({"PM_LOG_LEVEL": "verbose"}, "PM_LOG_LEVEL='verbose': expected debug, info, warning, error"),
    ({"PM_LOG_FORMAT": "xml"}, "PM_LOG_FORMAT='xml': expected json or text"),
    ({"PM_HTTP_HOST": " "}, "PM_HTTP_HOST"),
    ({"PM_TLS": "true"}, "PM_CERT_PATH='': a PEM certificate is required when PM_TLS=true"),
    ({"PM_TLS": "true", "PM_CERT_PATH": "/nonexistent.pem"}, "PM_KEY_PATH='': a PEM private key is required"),
    (
        {"PM_TLS": "true", "PM_CERT_PATH": "/nonexistent.pem", "PM_KEY_PATH": "/nonexistent.key"},
        "PM_CERT_PATH='/nonexistent.pem': expected a readable file (No such file or directory)",
    ),
    (
        {"PM_CLIENT_CA_PATH": "/etc/hostname"},
        "PM_CLIENT_CA_PATH='/etc/hostname': mutual TLS needs PM_TLS=true",
    ),
    (
        {"PM_STATE_FILE": "/nonexistent/dir/state.json"},
        "PM_STATE_FILE='/nonexistent/dir/state.json': expected a file in an existing folder",
    ),
    ({"KEYSTORE_TOOL_TIMEOUT": "0"}, "KEYSTORE_TOOL_TIMEOUT='0': expected a number of seconds above 0"),
    (
        {"KEYSTORE_ES_ENDPOINT": "localhost:9200"},
        "KEYSTORE_ES_ENDPOINT='localhost:9200': expected an http(s)://host:port URL",
    ),
    ({"KEYSTORE_ES_ENDPOINT": "https://127.0.0.1:99999"}, "KEYSTORE_ES_ENDPOINT"),
    ({"KEYSTORE_ES_VERSION": "eight"}, "KEYSTORE_ES_VERSION='eight': expected a version such as 8.15.0"),
    ({"KEYSTORE_RELOAD_CREDENTIALS": "perhaps"}, "KEYSTORE_RELOAD_CREDENTIALS='perhaps'"),
    (
        {"KEYSTORE_ES_PASSWORD_FILE": "/nonexistent/password"},
        "KEYSTORE_ES_PASSWORD_FILE='/nonexistent/password': expected a readable file",
    ),
]


@pytest.mark.parametrize(
    ("env", "message"), CASES, ids=[next(iter(c[0])) + "=" + next(iter(c[0].values())) for c in CASES]
)
def test_bad_variable_exits_2_with_one_line_and_starts_nothing(tmp_path, env, message) -> None:
    code, stderr, marker = run_espm(tmp_path, **env)
    assert code == 2
    assert stderr.count("\n") == 1, stderr
    assert message in stderr
    assert stderr.startswith("espm: ")
    assert not marker.exists()


def test_a_port_in_use_stops_the_manager_before_it_starts_anything(tmp_path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr, marker = run_espm(tmp_path, PM_HTTP_PORT=str(port))
    assert code == 2 and not marker.exists()
    assert f"PM_HTTP_PORT='{port}': cannot listen on 127.0.0.1:{port} (Address already in use)" in stderr


def test_an_address_that_cannot_be_listened_on(tmp_path) -> None:
    code, stderr, marker = run_espm(tmp_path, PM_HTTP_HOST="no-such-host.invalid")
    assert code == 2 and not marker.exists()
    assert stderr.startswith("espm: PM_HTTP_HOST='no-such-host.invalid': expected an address to listen on")


def test_ipv6_any_address_also_takes_ipv4(espm) -> None:
    m = espm(["sleep", "30"], env=base_env(PM_HTTP_HOST="::", PM_HTTP_PORT=str(free_port())))
    m.wait_api()
    assert m.request("GET", "/health")[0] == 200  # over 127.0.0.1


def test_flag_errors_name_the_variable_too(tmp_path) -> None:
    code, stderr, marker = run_espm(tmp_path, ["--pm-http-port", "x"])
    assert code == 2 and "PM_HTTP_PORT='x'" in stderr and not marker.exists()


def test_unknown_flag_is_a_usage_error(tmp_path) -> None:
    code, stderr, marker = run_espm(tmp_path, ["--pm-no-such-thing", "1"])
    assert code == 2 and "unknown flag --pm-no-such-thing" in stderr and not marker.exists()


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("KEYSTORE_SOURCE_DIR", "expected an existing directory; set PM_KEYSTORE_UPDATER=false"),
        ("KEYSTORE_BINARY", "expected an executable file; set PM_KEYSTORE_UPDATER=false"),
        ("KEYSTORE_PATH", "expected a file in an existing folder; set PM_KEYSTORE_UPDATER=false"),
    ],
)
def test_updater_errors_say_how_to_turn_it_off(tmp_path, variable, expected) -> None:
    good = {
        "PM_KEYSTORE_UPDATER": "true",
        "KEYSTORE_SOURCE_DIR": str(tmp_path),
        "KEYSTORE_BINARY": executable(tmp_path),
        "KEYSTORE_PATH": str(tmp_path / "elasticsearch.keystore"),
    }
    good[variable] = "/nonexistent/x/y"
    code, stderr, marker = run_espm(tmp_path, **good)
    assert code == 2 and f"{variable}='/nonexistent/x/y': {expected}" in stderr
    assert not marker.exists()


def test_defaults_of_the_updater_are_errors_on_a_machine_without_elasticsearch(tmp_path) -> None:
    code, stderr, _ = run_espm(tmp_path, PM_KEYSTORE_UPDATER="true")
    assert code == 2 and "KEYSTORE_SOURCE_DIR='/volumes/secrets'" in stderr


def test_reload_requirements(tmp_path) -> None:
    base = {
        "PM_KEYSTORE_UPDATER": "true",
        "KEYSTORE_SOURCE_DIR": str(tmp_path),
        "KEYSTORE_BINARY": executable(tmp_path),
        "KEYSTORE_PATH": str(tmp_path / "elasticsearch.keystore"),
        "KEYSTORE_RELOAD_CREDENTIALS": "true",
    }
    code, stderr, _ = run_espm(tmp_path, **base)
    assert code == 2 and "KEYSTORE_ES_USERNAME=''" in stderr
    code, stderr, _ = run_espm(tmp_path, **base, KEYSTORE_ES_USERNAME="elastic")
    assert code == 2 and "KEYSTORE_ES_PASSWORD=<redacted>: a password" in stderr
    code, stderr, _ = run_espm(
        tmp_path, **base, KEYSTORE_ES_USERNAME="elastic", KEYSTORE_ES_PASSWORD="pw-secret-value"
    )
    assert code == 2 and "KEYSTORE_ES_CA_CERTS_PATH='/volume/http-certs'" in stderr
    assert "pw-secret-value" not in stderr


def test_tls_files_that_do_not_match_are_a_configuration_error(tmp_path) -> None:
    for name in ("a", "b"):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                f"/CN={name}",
                "-keyout",
                str(tmp_path / f"{name}.key"),
                "-out",
                str(tmp_path / f"{name}.crt"),
            ],
            check=True,
            capture_output=True,
        )
    code, stderr, marker = run_espm(
        tmp_path, PM_TLS="true", PM_CERT_PATH=str(tmp_path / "a.crt"), PM_KEY_PATH=str(tmp_path / "b.key")
    )
    assert code == 2 and "PM_CERT_PATH=" in stderr and "do not load together" in stderr
    assert not marker.exists()


def test_corrupt_state_file_is_a_configuration_error(tmp_path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    code, stderr, marker = run_espm(tmp_path, PM_STATE_FILE=str(state))
    assert code == 2 and f"PM_STATE_FILE='{state}'" in stderr and "remove it" in stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "message"), [("'unbalanced", "No closing quotation"), ("  ", "the command is empty")]
)
def test_bad_command_variable(tmp_path, value, message) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "espm"], env=base_env(PM_PROC_CMD=value), capture_output=True, timeout=20
    )
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith(f"espm: PM_PROC_CMD={value!r}: expected a command line")


def test_command_variable_is_shlex_split_never_through_a_shell(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [PYTHON, "-m", "espm"],
        env=base_env(
            PM_HTTP_PORT="0", PM_PROC_CMD=f"sh -c 'printf \"%s|\" \"$@\" > {out}' x 'a b' '$HOME' \"c;d\""
        ),
        capture_output=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "a b|$HOME|c;d|"


def test_empty_command_after_double_dash(tmp_path) -> None:
    proc = subprocess.run([PYTHON, "-m", "espm", "--"], env=base_env(), capture_output=True, timeout=20)
    assert proc.returncode == 2 and b"expected a command after --" in proc.stderr


def test_error_line_is_written_before_any_log(tmp_path) -> None:
    code, stderr, _ = run_espm(tmp_path, PM_HTTP_PORT="-5")
    assert code == 2 and "{" not in stderr  # no JSON log line: nothing started logging
