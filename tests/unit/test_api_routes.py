"""The API's routes and debug endpoints through a fake port: no manager, no process, no socket.

The fake implements api/port.py's `Control` and records what it was asked, so each table says
which request reaches which action (and which never does), and how an outcome becomes a status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from espm.api.debug import DebugEndpoints
from espm.api.port import Outcome
from espm.api.routes import Request, Response, Router
from espm.api.server import ApiServer
from espm.config import HttpConfig
from espm.supervisor.state import UNHEALTHY, ProcessState
from tests.unit.test_server_protocol import HEALTH, connect

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "src" / "espm" / "openapi.json"
NAME = "es"
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
# The counters the manager reports (manager.py, ManagerControl.counters), each a different value.
COUNTERS = {
    name: n
    for n, name in enumerate(
        (
            "signals_forwarded",
            "zombies_reaped",
            "http_requests",
            "keystore_updates",
            "keystore_update_failures",
            "keystore_reloads",
            "keystore_tool_runs",
            "process_starts",
            "readiness_checks",
        ),
        start=3,
    )
}
HTTP = HttpConfig("127.0.0.1", 0, False, None, None, None, exp_vars=False, profiler=False, metrics=False)


@dataclasses.dataclass
class FakeControl:
    """api/port.py's Control, with answers a test sets and the requests it was asked."""

    state: ProcessState = ProcessState.STARTED
    running: bool = True
    record_error: str | None = None
    outcomes: dict[str, Outcome] = dataclasses.field(default_factory=dict)
    ready_reason: str | None = None
    keystore: dict[str, Any] | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict(COUNTERS))
    asked: list[str] = dataclasses.field(default_factory=list)

    def status(self) -> dict[str, object]:
        return {"name": NAME, "state": self.state.value, "pid": 42 if self.running else None}

    def status_json(self) -> bytes:
        return json.dumps(self.status()).encode()

    def _act(self, action: str) -> Outcome:
        self.asked.append(action)
        return self.outcomes.get(action, Outcome())

    def start(self) -> Outcome:
        return self._act("start")

    def stop(self) -> Outcome:
        return self._act("stop")

    def kill(self) -> Outcome:
        return self._act("kill")

    async def ready(self) -> str | None:
        self.asked.append("ready")
        return self.ready_reason

    def keystore_status(self) -> dict[str, Any] | None:
        return self.keystore

    def counters(self) -> dict[str, int]:
        return dict(self.counts)


def answer(router: Router, method: str, target: str) -> Response:
    """The response to one request, routed on an event loop as the server does."""

    async def route() -> Response:
        result = router.route(Request(method, target))
        return result if isinstance(result, Response) else await result

    return asyncio.run(route())


def doc(response: Response) -> Any:
    return json.loads(response.body)


@pytest.fixture
def no_tracemalloc() -> Iterator[None]:
    # The profiler switch starts tracemalloc for the whole process: the other tests must not pay.
    yield
    tracemalloc.stop()


# -- every route reaches its action, and only it -----------------------------------------------

ROUTES = [
    ("GET", "/health", 200, []),
    ("GET", "/es/status", 200, []),
    ("POST", "/es/start", 200, ["start"]),
    ("POST", "/es/stop", 200, ["stop"]),
    ("POST", "/es/kill", 200, ["kill"]),
    ("GET", "/es/ready", 200, ["ready"]),
    ("GET", "/keystore/status", 404, []),
    ("GET", "/openapi.json", 200, []),
    ("GET", "/es/status?pretty=true", 200, []),
    ("HEAD", "/es/status", 200, []),
]


@pytest.mark.parametrize(("method", "target", "status", "asked"), ROUTES)
def test_each_route_answers_and_asks_the_port_for_its_action_only(
    method: str, target: str, status: int, asked: list[str]
) -> None:
    control = FakeControl()
    response = answer(Router(control, NAME, HTTP), method, target)
    assert response.status == status
    assert control.asked == asked


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/health", "GET"),
        ("/es/start", "POST"),
        ("/es/stop", "POST"),
        ("/es/kill", "POST"),
        ("/es/status", "GET"),
        ("/es/ready", "GET"),
        ("/keystore/status", "GET"),
        ("/openapi.json", "GET"),
    ],
)
def test_every_other_method_gets_405_with_allow_and_never_acts(path: str, allowed: str) -> None:
    control = FakeControl()
    router = Router(control, NAME, HTTP)
    wrong = [m for m in METHODS if m != allowed and not (m == "HEAD" and allowed == "GET")]
    for method in wrong:
        response = answer(router, method, path)
        assert response.status == 405, method
        assert response.headers == [(b"allow", allowed.encode())]
        assert doc(response) == {"error": f"{path} takes {allowed}"}
    assert control.asked == []


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/es",
        "/es/",
        "/es/restart",
        "/other/status",
        "/ES/status",
        "/es/status/extra",
        "/debug/vars",
        "/metrics",
        "/debug/pprof/",
        "/debug/pprof/heap",
    ],
)
def test_unknown_paths_and_endpoints_switched_off_are_404(path: str) -> None:
    control = FakeControl()
    response = answer(Router(control, NAME, HTTP), "POST", path)
    assert response.status == 404 and doc(response) == {"error": f"no such endpoint: {path}"}
    assert control.asked == []


def test_the_process_name_is_the_one_configured() -> None:
    router = Router(FakeControl(), "search", HTTP)
    assert answer(router, "GET", "/search/status").status == 200
    assert answer(router, "GET", "/es/status").status == 404


# -- outcomes to status codes ----------------------------------------------------------------


@pytest.mark.parametrize("action", ["start", "stop", "kill"])
@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome(), 200),
        (Outcome(under_way=True), 202),
        (Outcome(error="cannot send SIGTERM: No such process"), 500),
    ],
)
def test_an_outcome_becomes_its_status_with_the_process_status(
    action: str, outcome: Outcome, status: int
) -> None:
    control = FakeControl(outcomes={action: outcome})
    response = answer(Router(control, NAME, HTTP), "POST", f"/es/{action}")
    assert response.status == status
    expected = control.status()
    if outcome.error is not None:
        expected["error"] = outcome.error
    assert doc(response) == expected


def test_a_start_the_port_refuses_while_the_keystore_is_built_is_a_500_naming_why() -> None:
    refusal = Outcome(error="the keystore is being built; the process starts after")
    control = FakeControl(state=ProcessState.NOT_INITIALIZED, running=False, outcomes={"start": refusal})
    response = answer(Router(control, NAME, HTTP), "POST", "/es/start")
    assert response.status == 500
    assert doc(response) == {"name": NAME, "state": "notInitialized", "pid": None, "error": refusal.error}


# -- health, readiness, keystore -------------------------------------------------------------


@pytest.mark.parametrize("state", list(ProcessState))
def test_health_is_500_exactly_in_the_unhealthy_states(state: ProcessState) -> None:
    response = answer(Router(FakeControl(state=state), NAME, HTTP), "GET", "/health")
    if state in UNHEALTHY:
        assert response.status == 500
        assert doc(response) == {"status": "error", "reason": f"process {NAME} is {state.value}"}
    else:
        assert (response.status, doc(response)) == (200, {"status": "ok"})


def test_a_state_file_that_cannot_be_written_is_a_warning_not_a_failed_probe() -> None:
    control = FakeControl(record_error="cannot write /run/espm/state: No space left on device")
    response = answer(Router(control, NAME, HTTP), "GET", "/health")
    assert (response.status, doc(response)) == (200, {"status": "warning", "reason": control.record_error})


@pytest.mark.parametrize(
    ("reason", "status", "body"),
    [
        (None, 200, {"ready": True}),
        ("process is stopped", 503, {"ready": False, "reason": "process is stopped"}),
        (
            "Elasticsearch answered GET / with HTTP 401",
            503,
            {"ready": False, "reason": "Elasticsearch answered GET / with HTTP 401"},
        ),
    ],
)
def test_readiness_is_the_ports_answer(reason: str | None, status: int, body: Any) -> None:
    response = answer(Router(FakeControl(ready_reason=reason), NAME, HTTP), "GET", "/es/ready")
    assert (response.status, doc(response)) == (status, body)


def test_keystore_status_is_the_updaters_or_404_when_it_is_off() -> None:
    off = answer(Router(FakeControl(), NAME, HTTP), "GET", "/keystore/status")
    assert (off.status, doc(off)) == (
        404,
        {"error": "the keystore updater is off (PM_KEYSTORE_UPDATER=false)"},
    )
    keystore = {"state": "synced", "updates": 2}
    on = answer(Router(FakeControl(keystore=keystore), NAME, HTTP), "GET", "/keystore/status")
    assert (on.status, doc(on)) == (200, keystore)


def test_the_openapi_document_is_served_as_shipped() -> None:
    response = answer(Router(FakeControl(), NAME, HTTP), "GET", "/openapi.json")
    assert response.body == OPENAPI.read_bytes()


# -- the route table and the document agree ---------------------------------------------------


def test_the_routes_and_the_openapi_document_agree() -> None:
    everything = dataclasses.replace(HTTP, exp_vars=True, metrics=True, profiler=True)
    control = FakeControl()
    # profiler=False: the table only, without starting tracemalloc for this process.
    routes = Router(control, NAME, HTTP).routes() + DebugEndpoints(control, NAME).routes(everything)
    spec = json.loads(OPENAPI.read_text())
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    assert {(r.template, r.method) for r in routes} == documented


# -- debug endpoints -------------------------------------------------------------------------

SWITCHES = {
    "exp_vars": ["/debug/vars"],
    "metrics": ["/metrics"],
    "profiler": ["/debug/pprof/", "/debug/pprof/profile", "/debug/pprof/heap", "/debug/pprof/tasks"],
}
DEBUG_PATHS = [path for paths in SWITCHES.values() for path in paths]


@pytest.mark.parametrize("switch", list(SWITCHES))
@pytest.mark.usefixtures("no_tracemalloc")
def test_each_switch_turns_on_its_endpoints_and_no_other(switch: str) -> None:
    router = Router(FakeControl(), NAME, dataclasses.replace(HTTP, **{switch: True}))
    for path in DEBUG_PATHS:
        response = answer(router, "GET", path + ("?seconds=0.01" if path.endswith("profile") else ""))
        assert (response.status == 404) is (path not in SWITCHES[switch]), path


def test_vars_reads_the_port() -> None:
    keystore = {"state": "synced"}
    control = FakeControl(state=ProcessState.STOPPED, running=False, keystore=keystore)
    router = Router(control, NAME, dataclasses.replace(HTTP, exp_vars=True))
    vars_ = doc(answer(router, "GET", "/debug/vars"))
    assert vars_["process"] == control.status()
    assert vars_["counters"] == control.counts
    assert vars_["keystore"] == keystore
    assert vars_["memory"]["rss_bytes"] > 1_000_000
    control.keystore = None
    assert "keystore" not in doc(answer(router, "GET", "/debug/vars"))


@pytest.mark.parametrize(
    ("state", "running"),
    [(ProcessState.STARTED, True), (ProcessState.STOPPING, True), (ProcessState.KILLED, False)],
)
def test_metrics_show_the_ports_state_and_counters(state: ProcessState, running: bool) -> None:
    control = FakeControl(state=state, running=running)
    router = Router(control, NAME, dataclasses.replace(HTTP, metrics=True))
    response = answer(router, "GET", "/metrics")
    assert response.content_type.startswith("text/plain; version=0.0.4")
    samples = dict(line.rsplit(" ", 1) for line in response.body.decode().splitlines() if line[0] != "#")
    for s in ProcessState:
        assert samples[f'espm_process_state{{name="{NAME}",state="{s.value}"}}'] == (
            "1" if s is state else "0"
        )
    assert samples[f'espm_process_up{{name="{NAME}"}}'] == ("1" if running else "0")
    for key in COUNTERS.keys() - {"keystore_tool_runs", "readiness_checks"}:
        assert samples[f"espm_{key}_total"] == str(COUNTERS[key]), key


@pytest.mark.usefixtures("no_tracemalloc")
@pytest.mark.parametrize(
    ("query", "status"),
    [("", 200), ("?seconds=abc", 400), ("?seconds=0", 400), ("?seconds=61", 400), ("?seconds=0.01", 200)],
)
def test_the_profile_checks_its_duration(query: str, status: int) -> None:
    router = Router(FakeControl(), NAME, dataclasses.replace(HTTP, profiler=True))
    if status == 200 and not query:
        # The default is 10 s: check that it is taken (an awaitable), without waiting it out.
        result = router.route(Request("GET", "/debug/pprof/profile"))
        assert not isinstance(result, Response)
        result.close()  # type: ignore[union-attr]
        return
    response = answer(router, "GET", "/debug/pprof/profile" + query)
    assert response.status == status
    if status == 200:
        assert b"function calls" in response.body


@pytest.mark.usefixtures("no_tracemalloc")
def test_one_profile_at_a_time() -> None:
    router = Router(FakeControl(), NAME, dataclasses.replace(HTTP, profiler=True))

    async def two() -> tuple[int, int]:
        first = router.route(Request("GET", "/debug/pprof/profile?seconds=0.05"))
        assert not isinstance(first, Response)
        task = asyncio.ensure_future(first)
        await asyncio.sleep(0)  # the first profile has begun
        second = router.route(Request("GET", "/debug/pprof/profile?seconds=0.05"))
        assert isinstance(second, Response)
        return (await task).status, second.status

    assert asyncio.run(two()) == (200, 409)


# -- through the server, on a fake transport: the answers as bytes ---------------------------


def exchange(control: FakeControl, data: bytes) -> tuple[bytes, ApiServer]:
    server = ApiServer(Router(control, NAME, HTTP).route, "127.0.0.1")
    conn, transport = connect(server)
    conn.data_received(data)
    return bytes(transport.out), server


def test_on_the_wire_a_head_answer_has_the_length_and_no_body() -> None:
    control = FakeControl()
    out, _ = exchange(control, b"HEAD /es/status HTTP/1.1\r\nHost: x\r\n\r\n" + HEALTH)
    length = str(len(control.status_json())).encode()
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: " + length in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")  # the next answer follows at once: no body between


def test_on_the_wire_a_stop_under_way_is_202_and_a_wrong_method_405_with_allow() -> None:
    control = FakeControl(outcomes={"stop": Outcome(under_way=True)})
    out, server = exchange(
        control,
        b"POST /es/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        b"DELETE /es/kill HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    first, second = out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"202 Accepted\r\n") and first.endswith(control.status_json())
    assert second.startswith(b"405 Method Not Allowed\r\n") and b"\r\nallow: POST\r\n" in second
    assert control.asked == ["stop"]
    assert server.counters()["http_requests"] == 2
