"""The endpoints, as plain functions of a request to a response; no sockets here."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from espm.supervisor.process import Outcome
from espm.supervisor.state import SIGNALLED, UNHEALTHY, ProcessState

if TYPE_CHECKING:
    from espm.manager import Manager

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class Request:
    """What a handler sees of a request."""

    method: str
    target: str
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.target.partition("?")[2])


@dataclass(frozen=True)
class Response:
    """A JSON answer: status, body bytes and any extra headers."""

    status: int
    body: bytes
    headers: list[Header] = field(default_factory=list)
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, doc: Any, headers: list[Header] | None = None) -> Response:
        return cls(status, json.dumps(doc).encode(), headers or [])

    @classmethod
    def error(cls, status: int, message: str, headers: list[Header] | None = None) -> Response:
        return cls.json(status, {"error": message}, headers)


Result = Response | Awaitable[Response]
Handler = Callable[[Request], Result]

_OK_HEALTH = Response(200, b'{"status": "ok"}')


# The API as data: (path, method, handler, the HttpConfig switch that turns it on). `{name}` is
# PM_PROC_NAME. The OpenAPI document is checked against this table by the tests.
ROUTES: tuple[tuple[str, str, str, str | None], ...] = (
    ("/health", "GET", "health", None),
    ("/{name}/start", "POST", "start", None),
    ("/{name}/stop", "POST", "stop", None),
    ("/{name}/kill", "POST", "kill", None),
    ("/{name}/status", "GET", "status", None),
    ("/{name}/ready", "GET", "ready", None),
    ("/keystore/status", "GET", "keystore_status", None),
    ("/openapi.json", "GET", "openapi", None),
    ("/debug/vars", "GET", "vars", "exp_vars"),
    ("/metrics", "GET", "metrics", "metrics"),
    ("/debug/pprof/", "GET", "pprof_index", "profiler"),
    ("/debug/pprof/profile", "GET", "pprof_profile", "profiler"),
    ("/debug/pprof/heap", "GET", "pprof_heap", "profiler"),
    ("/debug/pprof/tasks", "GET", "pprof_tasks", "profiler"),
)


class Router:
    """Maps (method, path) to a handler; 405 with Allow for a known path, 404 otherwise."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.process = manager.process
        name = manager.config.process.name
        http = manager.config.http
        debug: object = None
        if http.exp_vars or http.profiler or http.metrics:
            from espm.api.debug import DebugEndpoints

            debug = DebugEndpoints(manager)
        self._routes: dict[str, tuple[str, Handler, list[Header]]] = {}
        for template, method, handler, switch in ROUTES:
            if switch is not None and not getattr(http, switch):
                continue
            owner = self if switch is None else debug
            self._routes[template.replace("{name}", name)] = (
                method,
                getattr(owner, handler),
                [(b"allow", method.encode())],
            )

    def route(self, request: Request) -> Result:
        path = request.path
        entry = self._routes.get(path)
        if entry is None:
            return Response.error(404, f"no such endpoint: {path}")
        method, handler, allow = entry
        # HEAD is a GET without the body (the server leaves the body out).
        if request.method != method and not (request.method == "HEAD" and method == "GET"):
            return Response.error(405, f"{path} takes {method}", allow)
        return handler(request)

    # -- process ----------------------------------------------------------------------------

    def health(self, request: Request) -> Response:
        state = self.process.state
        if state in UNHEALTHY:
            return Response.json(
                500, {"status": "error", "reason": f"process {self.process.config.name} is {state.value}"}
            )
        if self.process.record_error is not None:
            # 200, not 500: a failed liveness probe restarts the container, and the next espm
            # would act on the older state the file still holds (e.g. start what was stopped).
            return Response.json(200, {"status": "warning", "reason": self.process.record_error})
        return _OK_HEALTH

    def status(self, request: Request) -> Response:
        return Response(200, self.process.status_json())

    def _answer(self, outcome: Outcome, in_progress: frozenset[ProcessState]) -> Response:
        if outcome.error is not None:
            doc = self.process.status()
            doc["error"] = outcome.error
            return Response.json(500, doc)
        code = 202 if self.process.state in in_progress else 200
        return Response(code, self.process.status_json())

    def start(self, request: Request) -> Response:
        if self.manager.building:
            # Elasticsearch must start with its secure settings: it starts when the build ends.
            return self._answer(
                Outcome(error="the keystore is being built; the process starts after"), frozenset()
            )
        return self._answer(self.process.start(), frozenset())

    def stop(self, request: Request) -> Response:
        return self._answer(self.process.stop(), SIGNALLED)

    def kill(self, request: Request) -> Response:
        return self._answer(self.process.kill(), SIGNALLED)

    async def ready(self, request: Request) -> Response:
        if not self.process.running:
            return Response.json(503, {"ready": False, "reason": f"process is {self.process.state.value}"})
        reason = await self.manager.readiness.check()
        if reason is None:
            return Response(200, b'{"ready": true}')
        return Response.json(503, {"ready": False, "reason": reason})

    # -- keystore and documents ------------------------------------------------------------

    def keystore_status(self, request: Request) -> Response:
        updater = self.manager.updater
        if updater is None:
            return Response.error(404, "the keystore updater is off (PM_KEYSTORE_UPDATER=false)")
        return Response.json(200, updater.status())

    def openapi(self, request: Request) -> Response:
        # A plain read: importlib.resources would load zipfile and friends (1 MiB) for one file.
        return Response(200, (Path(__file__).parent.parent / "openapi.json").read_bytes())
