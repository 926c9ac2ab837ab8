"""The managed process: start, stop, kill, its end, and the status the API reports."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from espm.config import PRIVATE_VARIABLES, ProcessConfig
from espm.supervisor.reaper import Reaper
from espm.supervisor.signals import ALL_SIGNALS, SignalForwarder, StartupSignals, signal_name
from espm.supervisor.spawn import SpawnError, spawn
from espm.supervisor.state import (
    SIGNALLED,
    Event,
    ProcessState,
    kept_down,
    next_state,
    write_state_file,
)
from espm.system.timestamps import rfc3339

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("espm.process")

RECORD_RETRY = 1.0  # seconds between two tries to record a state the state file missed


def checksum(path: Path) -> str | None:
    """CRC-32 of the file as a decimal string, or None when it cannot be read."""
    try:
        with path.open("rb") as f:
            crc = 0
            while chunk := f.read(65536):
                crc = zlib.crc32(chunk, crc)
    except OSError:
        return None
    return str(crc)


def _on_restart(state: ProcessState | None) -> str:
    """What a restart of espm would do with `state` in the state file."""
    kept = kept_down(state)
    return "start the process" if kept is None else f"keep it {kept.value}"


def exit_of(status: int) -> tuple[int, int | None]:
    """The exit code a shell would report for a raw wait status (128+N for signal N), and N."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return 128 - code, -code
    return code, None


@dataclass(frozen=True)
class Ending:
    """How the process ended, and whether an operator asked for it."""

    exit_code: int
    exit_signal: int | None
    requested: bool


@dataclass(frozen=True)
class Outcome:
    """The answer to an operator's request: did it fail, and why."""

    error: str | None = None


class ManagedProcess:
    """Owns the one managed process and its state; the only code that starts or signals it."""

    def __init__(
        self,
        config: ProcessConfig,
        reaper: Reaper,
        forwarder: SignalForwarder,
        startup: StartupSignals,
        env: Mapping[str, str],
        on_end: Callable[[Ending], None],
    ) -> None:
        self.config = config
        self.state = ProcessState.NOT_INITIALIZED
        self.since = time.time()
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.starts = 0
        self.config_checksum: str | None = None
        self._reaper = reaper
        self._forwarder = forwarder
        self._startup = startup
        self._env = {k: v for k, v in env.items() if k not in PRIVATE_VARIABLES}
        self._on_end = on_end
        self._stop_timer: asyncio.TimerHandle | None = None
        self._status_json: bytes | None = None
        # The state file: what it holds, and why the current state is not in it (a full disk).
        self.recorded: ProcessState | None = None
        self.record_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._record_retry: asyncio.TimerHandle | None = None

    # -- state ------------------------------------------------------------------------------

    def restore(self, state: ProcessState, recorded: ProcessState) -> None:
        """Take the state kept from a previous run (no process runs yet); `recorded` is the file's."""
        self.state = state
        self.recorded = recorded
        self._status_json = None
        if state is not recorded:
            self._record()  # a `stopping` read as `stopped` is recorded so

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on, retry a state that could not be recorded on `loop`."""
        self._loop = loop
        if self.record_error is not None:
            self._record()

    def detach(self) -> None:
        if self._record_retry is not None:
            self._record_retry.cancel()
            self._record_retry = None
        self._loop = None

    def _record(self) -> None:
        """Write the state to the state file; on failure say so in the status and retry."""
        self._record_retry = None
        path = self.config.state_file
        if path is None:
            return
        try:
            write_state_file(path, self.state, rfc3339(self.since))
        except OSError as err:
            if kept_down(self.recorded) is kept_down(self.state):
                # A restart would do the same either way (e.g. `stopping` and `stopped`).
                log.warning("cannot write the state file: %s", err.strerror, extra={"file.path": str(path)})
                self._cleared()
                return
            was = self.recorded.value if self.recorded is not None else "no state"
            error = (
                f"the state file cannot be written ({err.strerror}): it still holds {was}, and a "
                f"restart of espm would {_on_restart(self.recorded)}, not {_on_restart(self.state)}"
            )
            if error != self.record_error:
                log.error("%s", error, extra={"file.path": str(path)})
            self.record_error = error
            self._status_json = None
            if self._loop is not None and not self._loop.is_closed():
                self._record_retry = self._loop.call_later(RECORD_RETRY, self._record)
            return
        self._cleared()
        self.recorded = self.state

    def _cleared(self) -> None:
        if self.record_error is not None:
            log.info(
                "the state file agrees with the process again",
                extra={"file.path": str(self.config.state_file)},
            )
            self.record_error = None
            self._status_json = None

    def _move(self, event: Event) -> None:
        new = next_state(self.state, event)
        clean = event is Event.EXITED and self.exit_code in (0, *self.config.success_exit_codes)
        if new is ProcessState.FAILED and clean:
            # `failed` only means "ended without an API stop": a clean end is not logged as one.
            log.info(
                "process %s: %s -> ended cleanly (exit %s)",
                self.config.name,
                self.state.value,
                self.exit_code,
                extra={"event.action": event.value, "process.state": new.value},
            )
        elif new is not self.state or event is Event.START_OK:
            log.info(
                "process %s: %s -> %s",
                self.config.name,
                self.state.value,
                new.value,
                extra={"event.action": event.value},
            )
        self.state = new
        self.since = time.time()
        self._status_json = None
        if self._record_retry is not None:
            self._record_retry.cancel()
        self._record()

    def status(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "name": self.config.name,
            "state": self.state.value,
            "since": rfc3339(self.since),
            "pid": self.pid,
            "exit_code": self.exit_code,
            "exit_signal": self.exit_signal,
            "starts": self.starts,
            "config_checksum": self.config_checksum,
        }
        if self.record_error is not None:
            doc["warning"] = self.record_error  # an operator's stop is not safe from a restart
        return doc

    def status_json(self) -> bytes:
        """The status as JSON bytes, built once per state change (the hot path of the API)."""
        if self._status_json is None:
            self._status_json = json.dumps(self.status()).encode()
        return self._status_json

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- requests ---------------------------------------------------------------------------

    def start(self) -> Outcome:
        """Start the process unless one runs; a start while stopping or killing is refused."""
        if self.state in SIGNALLED:
            return Outcome(error=f"cannot start while {self.state.value}")
        if self.running:
            if self.state is not ProcessState.STARTED:
                self._move(Event.START_OK)  # a failed stop or kill left it running
            return Outcome()
        self.config_checksum = checksum(self.config.config_file)
        self.exit_code = self.exit_signal = None
        # Blocked until the pid is known to the forwarder and the reaper: a signal that comes
        # meanwhile then goes to the new process instead of being dropped.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
        try:
            pid = spawn(self.config.command, self._env, self._startup.mask, self._startup.ignored)
            self.pid = pid
            self._forwarder.target_pgid = pid
            self._reaper.register(pid, self._ended)
        except SpawnError as err:
            # The forked child exits at once; the reaper collects it.
            self._reaper.register(err.pid, lambda status: None)
            self.exit_code = err.exit_code
            self._move(Event.START_ERROR)
            log.error("%s", err, extra={"process.command_line": " ".join(self.config.command)})
            return Outcome(error=str(err))
        except OSError as err:
            self._move(Event.START_ERROR)
            log.error("cannot start the process: %s", err)
            return Outcome(error=f"cannot start the process: {err.strerror}")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self.starts += 1
        self._move(Event.START_OK)
        log.info("started %s", self.config.command[0], extra={"child.pid": pid})
        return Outcome()

    def stop(self) -> Outcome:
        """SIGTERM to the group; escalate to SIGKILL after PM_STOP_TIMEOUT if set."""
        if not self.running or self.state in SIGNALLED:
            return Outcome()
        pid = self.pid
        assert pid is not None
        outcome = self._signal(signal.SIGTERM, Event.STOP_SENT, Event.STOP_ERROR)
        if outcome.error is None and self.config.stop_timeout is not None:
            import asyncio

            self._stop_timer = asyncio.get_running_loop().call_later(
                self.config.stop_timeout, self._stop_timed_out, pid
            )
        return outcome

    def kill(self) -> Outcome:
        """SIGKILL to the group."""
        if not self.running or self.state is ProcessState.KILLING:
            return Outcome()
        return self._signal(signal.SIGKILL, Event.KILL_SENT, Event.KILL_ERROR)

    def _signal(self, signum: int, sent: Event, failed: Event) -> Outcome:
        assert self.pid is not None
        try:
            os.killpg(self.pid, signum)
        except OSError as err:
            self._move(failed)
            message = f"cannot send {signal_name(signum)}: {err.strerror}"
            log.error(message, extra={"child.pid": self.pid})
            return Outcome(error=message)
        self._move(sent)
        return Outcome()

    def _stop_timed_out(self, pid: int) -> None:
        if self.pid == pid and self.state is ProcessState.STOPPING:
            log.warning(
                "still running %ss after SIGTERM: sending SIGKILL",
                self.config.stop_timeout,
                extra={"child.pid": pid},
            )
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError as err:
                log.error("cannot send SIGKILL: %s", err.strerror)

    # -- its end ----------------------------------------------------------------------------

    def _ended(self, status: int) -> None:
        pgid = self.pid
        assert pgid is not None
        self._forwarder.target_pgid = None
        # Whatever the main process left in its group goes with it.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass  # ESRCH: nothing was left
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None
        code = os.waitstatus_to_exitcode(status)
        self.pid = None
        self.exit_code, self.exit_signal = exit_of(status)
        requested = self.state in SIGNALLED
        self._move(Event.EXITED)
        how = f"signal {signal_name(self.exit_signal)}" if self.exit_signal else f"exit {code}"
        log.info(
            "process ended (%s)",
            how,
            extra={"child.pid": pgid, "process.exit_code": self.exit_code},
        )
        self._on_end(Ending(self.exit_code, self.exit_signal, requested))
