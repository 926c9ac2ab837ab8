"""espm's own variables (its password, the `*_FILE` ones) reach neither Elasticsearch nor the tool."""

from __future__ import annotations

import ast
import asyncio
import signal
from pathlib import Path

import pytest

from espm.config import PRIVATE_VARIABLES
from espm.keystore.tool import KeystoreTool
from espm.supervisor.reaper import Reaper

SRC = Path(__file__).resolve().parents[2] / "src" / "espm"


def test_the_private_variables_are_the_secret_and_file_ones_of_the_table() -> None:
    assert {
        "KEYSTORE_ES_PASSWORD",
        "KEYSTORE_ES_PASSWORD_FILE",
        "KEYSTORE_PASSWORD_FILE",
        "PM_CONFIG_FILE",
        "PM_STATE_FILE",
    } == PRIVATE_VARIABLES


def test_no_module_but_the_table_names_the_password_variable() -> None:
    # A module that filters its own list drifts from the table; PRIVATE_VARIABLES is the one list.
    spelled = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == "KEYSTORE_ES_PASSWORD"
    ]
    assert set(spelled) == {"config.py"}, spelled


def test_the_keystore_tool_gets_none_of_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PRIVATE_VARIABLES:
        monkeypatch.setenv(name, f"/run/secrets/{name.lower()}")
    monkeypatch.setenv("ELASTIC_PASSWORD_FILE", "/run/secrets/elastic")  # the image's own: kept
    monkeypatch.setenv("ES_JAVA_OPTS", "-Xmx1g")

    async def run() -> str:
        reaper = Reaper(reap_orphans=False)
        reaper.install(asyncio.get_running_loop())
        try:
            done = await KeystoreTool(Path("/usr/bin/env"), 10, reaper).run((), tmp_path)
        finally:
            reaper.close()
        assert done.ok, done
        return done.stdout

    # Held blocked, as in the manager, so that the reaper's signalfd sees the tool's end.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        names = {line.split("=", 1)[0] for line in asyncio.run(run()).splitlines()}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert not names & PRIVATE_VARIABLES
    assert {"ELASTIC_PASSWORD_FILE", "ES_JAVA_OPTS", "ES_PATH_CONF"} <= names
