"""The process state machine as data, and the state file that persists it.

Rules of this module:
- `TRANSITIONS[state][event]` is the next state; a move that is not in the table raises
  `IllegalTransition` naming both, so a bug shows as an error instead of a wrong status.
- Pure: nothing here touches a process. The state file is written atomically (temporary file,
  fsync, rename, fsync of the folder) so a crash leaves the old or the new state, never half.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path


class ProcessState(enum.StrEnum):
    """The states of the managed process, named as the original manager named them."""

    NOT_INITIALIZED = "notInitialized"
    STARTED = "started"
    START_FAILED = "startFailed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STOP_FAILED = "stopFailed"
    KILLING = "killing"
    KILLED = "killed"
    KILL_FAILED = "killFailed"
    FAILED = "failed"


class Event(enum.StrEnum):
    """What happens to the process: an operator's request and its outcome, or its end."""

    START_OK = "start succeeded"
    START_ERROR = "start failed"
    STOP_SENT = "SIGTERM sent"
    STOP_ERROR = "SIGTERM failed"
    KILL_SENT = "SIGKILL sent"
    KILL_ERROR = "SIGKILL failed"
    EXITED = "process ended"


S = ProcessState
E = Event

# States in which no process runs: a start is allowed, stop and kill have nothing to do.
IDLE = frozenset({S.NOT_INITIALIZED, S.START_FAILED, S.STOPPED, S.KILLED, S.FAILED})
# States in which a process runs.
RUNNING = frozenset({S.STARTED, S.STOPPING, S.STOP_FAILED, S.KILLING, S.KILL_FAILED})
# States /health reports as an error.
UNHEALTHY = frozenset({S.START_FAILED, S.STOP_FAILED, S.KILL_FAILED})
# States in which an operator's stop or kill is under way.
SIGNALLED = frozenset({S.STOPPING, S.KILLING})
# States recorded by an operator's stop or kill: the process stays down across a restart.
KEPT_DOWN = frozenset({S.STOPPED, S.KILLED})

_START = {E.START_OK: S.STARTED, E.START_ERROR: S.START_FAILED}

TRANSITIONS: dict[ProcessState, dict[Event, ProcessState]] = {
    S.NOT_INITIALIZED: dict(_START),
    S.START_FAILED: dict(_START),
    S.STOPPED: dict(_START),
    S.KILLED: dict(_START),
    S.FAILED: dict(_START),
    S.STARTED: {
        E.STOP_SENT: S.STOPPING,
        E.STOP_ERROR: S.STOP_FAILED,
        E.KILL_SENT: S.KILLING,
        E.KILL_ERROR: S.KILL_FAILED,
        E.EXITED: S.FAILED,
    },
    S.STOPPING: {
        E.STOP_SENT: S.STOPPING,  # the stop timeout's escalation keeps it a stop
        E.KILL_SENT: S.KILLING,
        E.KILL_ERROR: S.KILL_FAILED,
        E.EXITED: S.STOPPED,
    },
    # The signal could not be sent, so the process still runs: the operator may try again,
    # or start it, which only acknowledges that it runs.
    S.STOP_FAILED: {
        E.START_OK: S.STARTED,
        E.STOP_SENT: S.STOPPING,
        E.STOP_ERROR: S.STOP_FAILED,
        E.KILL_SENT: S.KILLING,
        E.KILL_ERROR: S.KILL_FAILED,
        E.EXITED: S.FAILED,
    },
    S.KILLING: {E.EXITED: S.KILLED},
    S.KILL_FAILED: {
        E.START_OK: S.STARTED,
        E.STOP_SENT: S.STOPPING,
        E.STOP_ERROR: S.STOP_FAILED,
        E.KILL_SENT: S.KILLING,
        E.KILL_ERROR: S.KILL_FAILED,
        E.EXITED: S.FAILED,
    },
}


class IllegalTransition(RuntimeError):
    """A move the table does not allow."""


def next_state(state: ProcessState, event: Event) -> ProcessState:
    """The state after `event` in `state`, or IllegalTransition."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"no transition from {state.value} on {event.value}") from None


class StateFileError(Exception):
    """The state file exists but cannot be read back."""


def read_state_file(path: Path) -> ProcessState | None:
    """The state recorded at `path`, or None when there is no file yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateFileError(f"cannot read it ({err.strerror})") from None
    try:
        return ProcessState(json.loads(raw)["state"])
    except (ValueError, KeyError, TypeError):
        raise StateFileError("it does not hold a recorded state; remove it to start afresh") from None


def write_state_file(path: Path, state: ProcessState, since: str) -> None:
    """Record `state` at `path` atomically: a reader sees the old or the new state."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps({"state": state.value, "since": since}).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
