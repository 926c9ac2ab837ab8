"""Configuration parsing as a pure function: variables and flags in, a Config or one clear error out.

The black-box path (exit 2, one line on stderr, nothing started) is tested by a few cases in
tests/integration/test_config_errors.py; every parsing rule is checked here, in microseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from espm.cli import configure
from espm.config import ConfigError
from tests.conftest import base_env


def parse(tmp_path: Path, args: list[str] | None = None, **env: str):  # type: ignore[no-untyped-def]
    """Parse as `espm run` does; the command line ends with a marker command."""
    return configure(
        [*(args or []), "--", "touch", str(tmp_path / "started")], base_env(**{"PM_HTTP_PORT": "0", **env})
    )


def error(tmp_path: Path, args: list[str] | None = None, **env: str) -> str:
    """The one line espm prints for this configuration (without its `espm: ` prefix)."""
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, args, **env)
    text = str(caught.value)
    assert "\n" not in text
    return text


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
def test_bad_variable_is_one_clear_error(tmp_path, env, message) -> None:
    assert message in error(tmp_path, **env)


def test_flag_errors_name_the_variable_too(tmp_path) -> None:
    assert error(tmp_path, ["--pm-http-port", "x"]).startswith("PM_HTTP_PORT='x'")


def test_a_flag_wins_over_the_variable(tmp_path) -> None:
    config = parse(tmp_path, ["--pm-http-port", "9201"], PM_HTTP_PORT="9200")
    assert config.http.port == 9201


@pytest.mark.parametrize(
    ("raw", "value"),
    [(word, True) for word in ("true", "TRUE", "1", "yes", "On")]
    + [(w, False) for w in ("false", "0", "no", "OFF")],
)
def test_booleans(tmp_path, raw, value) -> None:
    assert parse(tmp_path, PM_EXIT_ON_STOP=raw).process.exit_on_stop is value


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
    assert f"{variable}='/nonexistent/x/y': {expected}" in error(tmp_path, **good)


def test_defaults_of_the_updater_are_errors_on_a_machine_without_elasticsearch(tmp_path) -> None:
    assert "KEYSTORE_SOURCE_DIR='/volumes/secrets'" in error(tmp_path, PM_KEYSTORE_UPDATER="true")


def test_reload_requirements(tmp_path) -> None:
    base = {
        "PM_KEYSTORE_UPDATER": "true",
        "KEYSTORE_SOURCE_DIR": str(tmp_path),
        "KEYSTORE_BINARY": executable(tmp_path),
        "KEYSTORE_PATH": str(tmp_path / "elasticsearch.keystore"),
        "KEYSTORE_RELOAD_CREDENTIALS": "true",
    }
    assert "KEYSTORE_ES_USERNAME=''" in error(tmp_path, **base)
    assert "KEYSTORE_ES_PASSWORD=<redacted>: a password" in error(
        tmp_path, **base, KEYSTORE_ES_USERNAME="elastic"
    )
    text = error(tmp_path, **base, KEYSTORE_ES_USERNAME="elastic", KEYSTORE_ES_PASSWORD="pw-secret-value")
    assert "KEYSTORE_ES_CA_CERTS_PATH='/volume/http-certs'" in text
    assert "pw-secret-value" not in text


@pytest.mark.parametrize(
    ("value", "message"), [("'unbalanced", "No closing quotation"), ("  ", "the command is empty")]
)
def test_bad_command_variable(value, message) -> None:
    with pytest.raises(ConfigError) as caught:
        configure([], base_env(PM_PROC_CMD=value))
    assert str(caught.value).startswith(f"PM_PROC_CMD={value!r}: expected a command line")
    assert message in str(caught.value)


def test_command_variable_is_shlex_split_never_through_a_shell() -> None:
    config = configure([], base_env(PM_PROC_CMD="sh -c 'printf \"%s|\" \"$@\"' x 'a b' '$HOME' \"c;d\""))
    assert config.process.command == ("sh", "-c", 'printf "%s|" "$@"', "x", "a b", "$HOME", "c;d")


def test_a_command_after_double_dash_wins_over_the_variable(tmp_path) -> None:
    config = configure(["--", "echo", "a b"], base_env(PM_PROC_CMD="false"))
    assert config.process.command == ("echo", "a b")


def test_empty_command_after_double_dash() -> None:
    with pytest.raises(ConfigError, match="expected a command after --"):
        configure(["--"], base_env())
