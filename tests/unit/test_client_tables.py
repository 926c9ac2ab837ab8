"""The ctl client agrees with the manager's tables: where it listens by default, when it is down."""

from __future__ import annotations

import dataclasses

import pytest

from espm import client, config
from espm.supervisor.state import IDLE


@pytest.fixture(autouse=True)
def no_pm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in config.VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)


def base_url(*argv: str) -> str:
    return client._base_url(client._parser("status").parse_args(list(argv)))


def test_with_nothing_set_it_asks_the_local_manager_on_its_default_port() -> None:
    # The manager binds 0.0.0.0:8080 over plain HTTP by default: the client asks 127.0.0.1 there.
    assert base_url() == "http://127.0.0.1:8080"
    assert client._parser("status").parse_args([]).pm_proc_name == "es"


def test_the_defaults_come_from_the_configuration_table(monkeypatch: pytest.MonkeyPatch) -> None:
    moved = {"PM_HTTP_HOST": "10.1.2.3", "PM_HTTP_PORT": "9601", "PM_TLS": "on", "PM_PROC_NAME": "node"}
    table = tuple(
        dataclasses.replace(v, default=moved[v.name]) if v.name in moved else v for v in config.VARIABLES
    )
    monkeypatch.setattr(config, "VARIABLES", table)
    assert base_url() == "https://10.1.2.3:9601"
    assert client._parser("status").parse_args([]).pm_proc_name == "node"


def test_the_environment_and_the_flags_win_over_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PM_HTTP_PORT", "9200")
    monkeypatch.setenv("PM_TLS", "yes")
    assert base_url() == "https://127.0.0.1:9200"
    assert base_url("--pm-http-port", "9300", "--pm-tls", "false") == "http://127.0.0.1:9300"


def test_a_restart_waits_for_exactly_the_states_in_which_no_process_runs() -> None:
    # The client may not import the supervisor: this keeps its copy of IDLE the table's.
    assert set(client._DOWN) == {state.value for state in IDLE}
