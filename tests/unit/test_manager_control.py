"""The manager's side of the API's port (ManagerControl): its rules for the API's requests.

The manager's parts are stand-ins with the process's answers; what is checked is the rule the
manager applies on top (no start while the keystore is built; a signal's effect under way; no
readiness check while nothing runs) and that the counters come from the right parts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from espm.api.port import Outcome
from espm.manager import ManagerControl
from espm.supervisor import process
from espm.supervisor.state import ProcessState

S = ProcessState


@dataclass
class Process:
    """ManagedProcess's answers: a request moves the state as the state table would."""

    state: ProcessState = S.STARTED
    pid: int | None = 42
    error: str | None = None
    starts: int = 1
    record_error: str | None = None
    asked: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def status(self) -> dict[str, object]:
        return {"state": self.state.value}

    def status_json(self) -> bytes:
        return b"{}"

    def _act(self, action: str, then: ProcessState) -> process.Outcome:
        self.asked.append(action)
        if self.error is None and (self.running or action == "start"):
            self.state = then
        return process.Outcome(self.error)

    def start(self) -> process.Outcome:
        return self._act("start", S.STARTED)

    def stop(self) -> process.Outcome:
        return self._act("stop", S.KILLING if self.state is S.KILLING else S.STOPPING)

    def kill(self) -> process.Outcome:
        return self._act("kill", S.KILLING)


class Probe:
    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        self.checks = 0

    async def check(self) -> str | None:
        self.checks += 1
        return self.reason


def control(proc: Process, building: bool = False, **parts: Any) -> ManagerControl:
    manager: Any = SimpleNamespace(
        process=proc,
        building=building,
        updater=parts.get("updater"),
        api=parts.get("api"),
        readiness=parts.get("readiness", Probe(None)),
        readiness_checks=5,
        forwarder=SimpleNamespace(forwarded=11),
        reaper=SimpleNamespace(orphans_reaped=13),
    )
    return ManagerControl(manager)


def test_no_start_while_the_keystore_is_being_built() -> None:
    proc = Process(state=S.NOT_INITIALIZED, pid=None)
    outcome = control(proc, building=True).start()
    assert outcome == Outcome(error="the keystore is being built; the process starts after")
    assert proc.asked == []  # the process was never asked


def test_a_start_after_the_build_goes_to_the_process() -> None:
    proc = Process(state=S.NOT_INITIALIZED, pid=None)
    assert control(proc).start() == Outcome()
    assert proc.asked == ["start"]


@pytest.mark.parametrize(
    ("action", "before", "pid", "error", "expected"),
    [
        ("stop", S.STARTED, 42, None, Outcome(under_way=True)),  # SIGTERM sent now
        ("stop", S.STOPPING, 42, None, Outcome(under_way=True)),  # a stop under way
        ("stop", S.KILLING, 42, None, Outcome(under_way=True)),  # a kill under way
        ("stop", S.STOPPED, None, None, Outcome()),  # nothing runs
        ("kill", S.STARTED, 42, None, Outcome(under_way=True)),
        ("kill", S.KILLED, None, None, Outcome()),
        ("stop", S.STARTED, 42, "cannot send SIGTERM: Operation not permitted", None),
        ("kill", S.STARTED, 42, "cannot send SIGKILL: Operation not permitted", None),
        ("start", S.STOPPING, 42, "cannot start while stopping", None),
        ("start", S.STOPPED, None, None, Outcome()),
    ],
)
def test_outcomes_say_failed_under_way_or_done(
    action: str, before: ProcessState, pid: int | None, error: str | None, expected: Outcome | None
) -> None:
    proc = Process(state=before, pid=pid, error=error)
    outcome = getattr(control(proc), action)()
    assert outcome == (expected if error is None else Outcome(error=error))
    assert proc.asked == [action]


def test_readiness_asks_elasticsearch_only_while_the_process_runs() -> None:
    probe = Probe("Elasticsearch answered GET / with HTTP 401")
    stopped = control(Process(state=S.STOPPED, pid=None), readiness=probe)
    assert asyncio.run(stopped.ready()) == "process is stopped"
    assert probe.checks == 0
    running = control(Process(), readiness=probe)
    assert asyncio.run(running.ready()) == probe.reason and probe.checks == 1


def test_keystore_status_is_none_without_an_updater() -> None:
    assert control(Process()).keystore_status() is None
    updater = SimpleNamespace(status=lambda: {"state": "synced"})
    assert control(Process(), updater=updater).keystore_status() == {"state": "synced"}


def test_counters_come_from_each_part() -> None:
    updater = SimpleNamespace(updates=2, update_failures=1, reloads=4, tool=SimpleNamespace(runs=6))
    api = SimpleNamespace(counters=lambda: {"http_requests": 9, "http_timeouts": 8})
    counters = control(Process(starts=3), updater=updater, api=api).counters()
    assert counters == {
        "signals_forwarded": 11,
        "zombies_reaped": 13,
        "http_requests": 9,
        "http_timeouts": 8,
        "keystore_updates": 2,
        "keystore_update_failures": 1,
        "keystore_reloads": 4,
        "keystore_tool_runs": 6,
        "process_starts": 3,
        "readiness_checks": 5,
    }
    bare = control(Process(starts=3)).counters()
    assert bare["keystore_updates"] == 0 and "http_requests" not in bare
