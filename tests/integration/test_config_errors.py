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


# The exit-2 path, black-box: a few representatives (a number, a boolean, a list of codes).
# Every parsing rule has its own fast case in tests/unit/test_config_parsing.py; all of them
# reach the user through this same path.
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PM_HTTP_PORT": "http"}, "PM_HTTP_PORT='http': expected a port number 0-65535"),
        ({"PM_REAPER": "maybe"}, "PM_REAPER='maybe': expected true/false, 1/0, yes/no or on/off"),
        ({"PM_SUCCESS_EXIT_CODES": "300"}, "300 is outside 0-255"),
    ],
    ids=["port", "boolean", "exit-codes"],
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


def test_unknown_flag_is_a_usage_error(tmp_path) -> None:
    code, stderr, marker = run_espm(tmp_path, ["--pm-no-such-thing", "1"])
    assert code == 2 and "unknown flag --pm-no-such-thing" in stderr and not marker.exists()


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


@pytest.mark.parametrize(("value", "message"), [("'unbalanced", "No closing quotation")])
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


def test_error_line_is_written_before_any_log(tmp_path) -> None:
    code, stderr, _ = run_espm(tmp_path, PM_HTTP_PORT="-5")
    assert code == 2 and "{" not in stderr  # no JSON log line: nothing started logging
