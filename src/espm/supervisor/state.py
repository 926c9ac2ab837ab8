"""The process state machine as data, and the state file that persists it.

Rules of this module:
- `TRANSITIONS[state][event]` is the next state; a move that is not in the table raises
  `IllegalTransition` naming both, so a bug shows as an error instead of a wrong status.
- Pure: nothing here touches a process. The state file is written atomically
  (`espm.system.files`: temporary file, fsync, rename, fsync of the folder) so a crash leaves the
  old or the new state, never half.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import stat
from pathlib import Path

from espm.system.files import replace_atomically


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
# What a recorded state means to the next manager (after a restart, or a crash of espm itself):
# an operator's stop or kill keeps the process down, including one whose end was asked for but
# not yet seen (the crash interrupted it). Every other recorded state starts the process.
KEPT_DOWN: dict[ProcessState, ProcessState] = {
    S.STOPPED: S.STOPPED,
    S.KILLED: S.KILLED,
    S.STOPPING: S.STOPPED,
    S.KILLING: S.KILLED,
}

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


def kept_down(recorded: ProcessState | None) -> ProcessState | None:
    """The state a new manager takes from the recorded one: stopped or killed, or None to start.

    Never raises: a manager that cannot start after a crash would leave the pod crash-looping.
    """
    return KEPT_DOWN.get(recorded) if recorded is not None else None


class StateFileError(Exception):
    """The state file exists but cannot be read back."""


# The file holds one small JSON object; anything larger is not ours.
MAX_STATE_FILE = 4096
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
_NOT_OURS = "it does not hold a recorded state; remove it to start afresh"


def read_state_file(path: Path) -> ProcessState | None:
    """The state recorded at `path`, or None when there is no file yet."""
    try:
        # Non-blocking: a FIFO put in its place must not hang the manager before its handlers run.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateFileError(f"cannot read it ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "something else")
            raise StateFileError(f"expected a regular file (espm writes it itself), found {kind}")
        if info.st_size > MAX_STATE_FILE:
            raise StateFileError(
                f"expected at most {MAX_STATE_FILE} bytes, found {info.st_size}; {_NOT_OURS}"
            )
        raw = b""
        while len(raw) <= MAX_STATE_FILE and (chunk := os.read(fd, MAX_STATE_FILE + 1 - len(raw))):
            raw += chunk
    except OSError as err:
        raise StateFileError(f"cannot read it ({err.strerror})") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_STATE_FILE:  # it grew while read
        raise StateFileError(f"expected at most {MAX_STATE_FILE} bytes; {_NOT_OURS}")
    return parse_state(raw)


def parse_state(raw: bytes) -> ProcessState:
    """The state in a state file's content, or StateFileError."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep for the parser
        raise StateFileError(_NOT_OURS) from None
    state = doc.get("state") if isinstance(doc, dict) else None
    try:
        return ProcessState(state if isinstance(state, str) else "")
    except ValueError:
        raise StateFileError(_NOT_OURS) from None


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of writes that a crash of an earlier manager cut short."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_state_file(path: Path, state: ProcessState, since: str) -> None:
    """Record `state` at `path` atomically: a reader sees the old or the new state."""
    data = json.dumps({"state": state.value, "since": since}).encode() + b"\n"
    # `.NAME.<pid>.tmp`: the name remove_stale_temporaries looks for after a crash.
    replace_atomically(path, data, 0o644, tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp"))
