"""The keystore part of the configuration as a pure function: KEYSTORE_WRITER, KEYSTORE_PASSWORD_FILE."""

from __future__ import annotations

from pathlib import Path

import pytest

from espm.config import ConfigError, load


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    return {
        "PM_PROC_CMD": "true",
        "KEYSTORE_SOURCE_DIR": str(secrets),
        "KEYSTORE_BINARY": str(tool),
        "KEYSTORE_PATH": str(tmp_path / "elasticsearch.keystore"),
        **extra,
    }


def test_the_defaults_are_auto_and_no_password(tmp_path: Path) -> None:
    keystore = load(env(tmp_path)).keystore
    assert (keystore.writer, keystore.password_file) == ("auto", None)


@pytest.mark.parametrize("value", ["native", "NATIVE", " tool ", "auto"])
def test_the_writer_is_one_of_three(tmp_path: Path, value: str) -> None:
    assert load(env(tmp_path, KEYSTORE_WRITER=value)).keystore.writer == value.strip().lower()


def test_a_writer_that_is_not_one_of_three_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"KEYSTORE_WRITER='jvm': expected auto, native or tool"):
        load(env(tmp_path, KEYSTORE_WRITER="jvm"))


def test_the_native_writer_needs_no_tool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEYSTORE_BINARY"):
        load(env(tmp_path, KEYSTORE_BINARY="/nonexistent/tool"))
    config = load(env(tmp_path, KEYSTORE_BINARY="/nonexistent/tool", KEYSTORE_WRITER="native"))
    assert config.keystore.writer == "native"


def test_the_native_writer_refuses_a_version_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"KEYSTORE_ES_VERSION='6.2.4': the native writer cannot write"):
        load(env(tmp_path, KEYSTORE_WRITER="native", KEYSTORE_ES_VERSION="6.2.4"))
    assert (
        load(env(tmp_path, KEYSTORE_WRITER="native", KEYSTORE_ES_VERSION="6.3.0")).keystore.es_version
        == "6.3.0"
    )


def test_the_password_file_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"KEYSTORE_PASSWORD_FILE='.*missing': expected a readable file"):
        load(env(tmp_path, KEYSTORE_PASSWORD_FILE=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="KEYSTORE_PASSWORD_FILE"):
        load(env(tmp_path, KEYSTORE_PASSWORD_FILE=str(tmp_path)))  # a folder
    given = tmp_path / "password"
    given.write_text("pw\n")
    assert load(env(tmp_path, KEYSTORE_PASSWORD_FILE=str(given))).keystore.password_file == given
