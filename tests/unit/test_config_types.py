"""Every Config field holds the type it declares, defaults and set values alike.

mypy --strict checks the parsers against the fields (`_Source.parse` is generic); this is the
same promise at run time, for what a type checker cannot see (a parser's own return statements).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest

from espm.config import Config, load


def holds(value: object, hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(holds(value, arg) for arg in typing.get_args(hint))
    if origin in (tuple, frozenset):
        (item, *_) = typing.get_args(hint)
        return isinstance(value, origin) and all(holds(v, item) for v in value)
    if hint is type(None):
        return value is None
    assert isinstance(hint, type), hint
    if hint is int or hint is float:  # a bool is an int to isinstance, not to a reader
        return isinstance(value, hint) and not isinstance(value, bool)
    return isinstance(value, hint)


def wrong_fields(config: Config) -> list[str]:
    wrong = []
    for part in dataclasses.fields(config):
        section = getattr(config, part.name)
        hints = typing.get_type_hints(type(section))
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            if not holds(value, hints[field.name]):
                wrong.append(f"{part.name}.{field.name}={value!r} is no {hints[field.name]}")
    return wrong


def every_variable_set(tmp_path: Path) -> dict[str, str]:
    for name in ("cert.pem", "key.pem", "ca.pem", "password"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "secrets").mkdir()
    return {
        "PM_PROC_CMD": "sleep 60",
        "PM_REAPER": "off",
        "PM_HTTP_PORT": "9601",
        "PM_TLS": "yes",
        "PM_CERT_PATH": str(tmp_path / "cert.pem"),
        "PM_KEY_PATH": str(tmp_path / "key.pem"),
        "PM_CLIENT_CA_PATH": str(tmp_path / "ca.pem"),
        "PM_STATE_FILE": str(tmp_path / "state.json"),
        "PM_STOP_TIMEOUT": "2.5",
        "PM_EXIT_ON_STOP": "1",
        "PM_SUCCESS_EXIT_CODES": "1, 143",
        "PM_EXP_VARS": "true",
        "PM_LOG_LEVEL": "DEBUG",
        "PM_LOG_FORMAT": "text",
        "KEYSTORE_SOURCE_DIR": str(tmp_path / "secrets"),
        "KEYSTORE_PATH": str(tmp_path / "elasticsearch.keystore"),
        "KEYSTORE_WRITER": "native",
        "KEYSTORE_ES_VERSION": "8.15.0",
        "KEYSTORE_TOOL_TIMEOUT": "30",
        "KEYSTORE_RELOAD_CREDENTIALS": "true",
        "KEYSTORE_ES_USERNAME": "elastic",
        "KEYSTORE_ES_PASSWORD_FILE": str(tmp_path / "password"),
        "KEYSTORE_ES_ENDPOINT": "http://127.0.0.1:9200/",
        "KEYSTORE_PASSWORD_FILE": str(tmp_path / "password"),
    }


@pytest.mark.parametrize("setting", ["defaults", "every variable set"])
def test_every_field_holds_its_declared_type(setting: str, tmp_path: Path) -> None:
    env = {"PM_KEYSTORE_UPDATER": "false"} if setting == "defaults" else every_variable_set(tmp_path)
    config = load(env)
    assert wrong_fields(config) == []
    if setting != "defaults":  # the optional fields were really filled, not left None
        assert config.http.client_ca_path is not None and config.process.stop_timeout == 2.5
        assert config.keystore.password_file is not None and config.keystore.es_password == "x"
