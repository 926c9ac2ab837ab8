"""The API's narrow port: what it may read of the manager and ask of it, and nothing more.

The manager implements `Control` (manager.py, `ManagerControl`); the API's tests use a fake that
does too. Policy (when a start is refused, what makes Elasticsearch ready) stays behind the port;
the API only turns answers into HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from espm.supervisor.state import ProcessState


@dataclass(frozen=True)
class Outcome:
    """What an operator's start, stop or kill came to."""

    error: str | None = None  # refused or failed, and why
    under_way: bool = False  # a signal is out and the process has not ended yet


class Control(Protocol):
    """The manager as the control API sees it."""

    @property
    def state(self) -> ProcessState: ...

    @property
    def running(self) -> bool: ...

    @property
    def record_error(self) -> str | None:
        """Why the state file could not be written, while it cannot."""
        ...

    def status(self) -> dict[str, object]: ...

    def status_json(self) -> bytes:
        """`status()` as JSON bytes (cached by the process: the API's hot path)."""
        ...

    def start(self) -> Outcome: ...

    def stop(self) -> Outcome: ...

    def kill(self) -> Outcome: ...

    async def ready(self) -> str | None:
        """None when Elasticsearch is ready; otherwise why not."""
        ...

    def keystore_status(self) -> dict[str, Any] | None:
        """The updater's status; None when the updater is off."""
        ...

    def counters(self) -> dict[str, int]:
        """The manager's counters, by their /debug/vars names (the API's own included)."""
        ...
