"""The endpoints, as plain functions of a request to a response; no sockets here."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from espm.supervisor.process import Outcome
from espm.supervisor.state import UNHEALTHY, ProcessState

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


class Router:
    """Maps (method, path) to a handler; 405 with Allow for a known path, 404 otherwise."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.process = manager.process
        name = manager.config.process.name
        http = manager.config.http
        self._routes: dict[str, tuple[str, Handler]] = {
            "/health": ("GET", self.health),
            f"/{name}/start": ("POST", self.start),
            f"/{name}/stop": ("POST", self.stop),
            f"/{name}/kill": ("POST", self.kill),
            f"/{name}/status": ("GET", self.status),
            f"/{name}/ready": ("GET", self.ready),
            "/keystore/status": ("GET", self.keystore_status),
            "/openapi.json": ("GET", self.openapi),
        }
        self._prefixes: list[tuple[str, str, Handler]] = []
        if http.exp_vars or http.profiler or http.metrics:
            from espm.api.debug import DebugEndpoints

            debug = DebugEndpoints(manager)
            if http.exp_vars:
                self._routes["/debug/vars"] = ("GET", debug.vars)
            if http.metrics:
                self._routes["/metrics"] = ("GET", debug.metrics)
            if http.profiler:
                self._prefixes.append(("/debug/pprof/", "GET", debug.pprof))
        self._allow = {path: [(b"allow", method.encode())] for path, (method, _) in self._routes.items()}

    def route(self, request: Request) -> Result:
        path = request.path
        entry = self._routes.get(path)
        if entry is None:
            for prefix, method, handler in self._prefixes:
                if path.startswith(prefix) or path == prefix.rstrip("/"):
                    entry = (method, handler)
                    break
            else:
                return Response.error(404, f"no such endpoint: {path}")
        method, handler = entry
        if request.method != method:
            allow = self._allow.get(path, [(b"allow", method.encode())])
            return Response.error(405, f"{path} takes {method}", allow)
        return handler(request)

    # -- process ----------------------------------------------------------------------------

    def health(self, request: Request) -> Response:
        state = self.process.state
        if state in UNHEALTHY:
            return Response.json(
                500, {"status": "error", "reason": f"process {self.process.config.name} is {state.value}"}
            )
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
        return self._answer(self.process.start(), frozenset())

    def stop(self, request: Request) -> Response:
        return self._answer(self.process.stop(), _SIGNALLED)

    def kill(self, request: Request) -> Response:
        return self._answer(self.process.kill(), _SIGNALLED)

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
        from importlib.resources import files

        return Response(200, files("espm").joinpath("openapi.json").read_bytes())


_SIGNALLED = frozenset({ProcessState.STOPPING, ProcessState.KILLING})
