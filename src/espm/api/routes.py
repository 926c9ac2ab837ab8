"""The endpoints, as plain functions of a request to a response; no sockets here."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from espm.supervisor.state import UNHEALTHY

if TYPE_CHECKING:
    from espm.api.port import Control, Outcome
    from espm.config import HttpConfig

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


@dataclass(frozen=True)
class Route:
    """One endpoint: its path (`{name}` is PM_PROC_NAME), its method, and its handler."""

    template: str
    method: str
    handler: Handler


class Router:
    """Maps (method, path) to a handler; 405 with Allow for a known path, 404 otherwise."""

    def __init__(self, control: Control, name: str, http: HttpConfig) -> None:
        self.control = control
        self.name = name
        routes = self.routes()
        if http.exp_vars or http.profiler or http.metrics:
            from espm.api.debug import DebugEndpoints

            routes += DebugEndpoints(control, name, profiler=http.profiler).routes(http)
        self._routes: dict[str, tuple[str, Handler, list[Header]]] = {
            route.template.replace("{name}", name): (
                route.method,
                route.handler,
                [(b"allow", route.method.encode())],
            )
            for route in routes
        }

    def routes(self) -> list[Route]:
        """The endpoints that are always on (the OpenAPI document lists these and the debug ones)."""
        return [
            Route("/health", "GET", self.health),
            Route("/{name}/start", "POST", self.start),
            Route("/{name}/stop", "POST", self.stop),
            Route("/{name}/kill", "POST", self.kill),
            Route("/{name}/status", "GET", self.status),
            Route("/{name}/ready", "GET", self.ready),
            Route("/keystore/status", "GET", self.keystore_status),
            Route("/openapi.json", "GET", self.openapi),
        ]

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
        state = self.control.state
        if state in UNHEALTHY:
            return Response.json(500, {"status": "error", "reason": f"process {self.name} is {state.value}"})
        record_error = self.control.record_error
        if record_error is not None:
            # 200, not 500: a failed liveness probe restarts the container, and the next espm
            # would act on the older state the file still holds (e.g. start what was stopped).
            return Response.json(200, {"status": "warning", "reason": record_error})
        return _OK_HEALTH

    def status(self, request: Request) -> Response:
        return Response(200, self.control.status_json())

    def _answer(self, outcome: Outcome) -> Response:
        """500 with the status and the error; 202 while a signal's effect is under way; else 200."""
        if outcome.error is not None:
            doc = self.control.status()
            doc["error"] = outcome.error
            return Response.json(500, doc)
        return Response(202 if outcome.under_way else 200, self.control.status_json())

    def start(self, request: Request) -> Response:
        return self._answer(self.control.start())

    def stop(self, request: Request) -> Response:
        return self._answer(self.control.stop())

    def kill(self, request: Request) -> Response:
        return self._answer(self.control.kill())

    async def ready(self, request: Request) -> Response:
        reason = await self.control.ready()
        if reason is None:
            return Response(200, b'{"ready": true}')
        return Response.json(503, {"ready": False, "reason": reason})

    # -- keystore and documents ------------------------------------------------------------

    def keystore_status(self, request: Request) -> Response:
        status = self.control.keystore_status()
        if status is None:
            return Response.error(404, "the keystore updater is off (PM_KEYSTORE_UPDATER=false)")
        return Response.json(200, status)

    def openapi(self, request: Request) -> Response:
        # A plain read: importlib.resources would load zipfile and friends (1 MiB) for one file.
        return Response(200, (Path(__file__).parent.parent / "openapi.json").read_bytes())
