"""Wiring: starts the parts in order (child first), owns the exit status, shuts down."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from espm.api.port import Outcome
from espm.config import Config
from espm.supervisor.process import Ending, ManagedProcess
from espm.supervisor.reaper import Reaper, set_child_subreaper
from espm.supervisor.signals import (
    TERMINATING,
    SignalForwarder,
    StartupSignals,
    signal_name,
)
from espm.supervisor.state import SIGNALLED, ProcessState, kept_down, remove_stale_temporaries

if TYPE_CHECKING:
    import asyncio
    import socket

    from espm.api.readiness import ReadinessProbe
    from espm.api.server import ApiServer
    from espm.api.tls import CertificateWatcher
    from espm.keystore.updater import KeystoreUpdater

log = logging.getLogger("espm.manager")

EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE


class Manager:
    """Everything one run of espm holds: the process, the reaper, the API, the updater."""

    def __init__(
        self,
        config: Config,
        startup: StartupSignals,
        forwarder: SignalForwarder,
        env: Mapping[str, str],
        recorded: ProcessState | None,
        listener: socket.socket,
        tls: CertificateWatcher | None = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self.startup = startup
        self.forwarder = forwarder
        self.recorded = recorded
        self.kept_down_as = kept_down(recorded)
        if config.process.state_file is not None:
            remove_stale_temporaries(config.process.state_file)
        self.tls = tls
        self.reaper = Reaper(config.process.reaper)
        self.process = ManagedProcess(
            config.process, self.reaper, forwarder, startup, env, self._process_ended
        )
        if self.kept_down_as is not None and recorded is not None:
            self.process.restore(self.kept_down_as, recorded)
        elif recorded is not None:
            self.process.recorded = recorded
            log.info("the state file records %s: the process starts", recorded.value)
        self.updater: KeystoreUpdater | None = None
        self.api: ApiServer | None = None
        self._readiness: ReadinessProbe | None = None
        self._exit: asyncio.Future[int] | None = None
        self._early_exit: int | None = None  # decided before the loop ran
        self._terminating = False
        self.building = False  # the first keystore build is under way: no start yet

    @property
    def readiness(self) -> ReadinessProbe:
        if self._readiness is None:
            from espm.api.readiness import ReadinessProbe

            self._readiness = ReadinessProbe(self.config.keystore)
        return self._readiness

    @property
    def readiness_checks(self) -> int:
        return self._readiness.checks if self._readiness is not None else 0

    # -- decisions --------------------------------------------------------------------------

    @property
    def kept_down(self) -> bool:
        """The state file says an operator stopped the process: wait for an API start."""
        return self.kept_down_as is not None

    def exit(self, code: int) -> None:
        if self._exit is None:
            self._early_exit = code if self._early_exit is None else self._early_exit
        elif not self._exit.done():
            self._exit.set_result(code)

    def exit_status(self, ending: Ending) -> int:
        return 0 if ending.exit_code in self.config.process.success_exit_codes else ending.exit_code

    def _exit_after(self, ending: Ending, why: str) -> None:
        code = self.exit_status(ending)
        if code != ending.exit_code:
            log.info(
                "%s: exiting with 0 (its status %d is listed in PM_SUCCESS_EXIT_CODES)",
                why,
                ending.exit_code,
                extra={"process.exit_code": ending.exit_code},
            )
        else:
            log.info("%s: exiting with its status, %d", why, code, extra={"process.exit_code": code})
        self.exit(code)

    def _process_ended(self, ending: Ending) -> None:
        if self._terminating:
            self._exit_after(ending, "the process ended after SIGTERM/SIGINT to the manager")
        elif not ending.requested:
            self._exit_after(ending, "the process ended without an API stop")
        elif self.config.process.exit_on_stop:
            self._exit_after(ending, "the process ended after an API request and PM_EXIT_ON_STOP is set")

    def _signal_seen(self, signum: int, forwarded: bool) -> None:
        name = signal_name(signum)
        if forwarded:
            # The signals that end a container are worth a line in the pod's log; others are noise.
            level = logging.INFO if signum in TERMINATING else logging.DEBUG
            log.log(level, "forwarded %s to the process group", name, extra={"signal": name})
            if signum in (signal.SIGTERM, signal.SIGINT) and self.process.state in SIGNALLED:
                # The container is being stopped while an operator's stop or kill is under way:
                # when the process ends, the manager must end too, not wait for another start.
                self._terminating = True
        elif not self.process.running and signum in TERMINATING:
            log.info("%s with no process running: exiting", name, extra={"signal": name})
            self.exit(0)
        else:
            log.info("%s dropped: no process to forward it to", name, extra={"signal": name})
        # The safety net: a signal is a wake-up, and every wake-up sweeps for ended children.
        # After the bookkeeping: a SIGTERM forwarded during a stop must count before the end.
        self.reaper.reap()

    # -- the run ----------------------------------------------------------------------------

    def start_first(self) -> bool:
        """Start the process before the event loop, when nothing has to come first.

        Returns False when the manager must exit instead (see `early_exit`).
        """
        self.forwarder.drain(self._signal_seen)
        if self._early_exit is not None:
            return False
        outcome = self.process.start()
        if outcome.error is not None:
            self._early_exit = self.process.exit_code or 1
            return False
        return True

    @property
    def early_exit(self) -> int | None:
        return self._early_exit

    async def main(self, started: bool) -> int:
        import asyncio

        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        if self._early_exit is not None:
            self._exit.set_result(self._early_exit)
        self.reaper.install(loop)
        self.forwarder.attach(loop, self._signal_seen)
        self.process.attach(loop)
        try:
            if self.config.keystore.enabled:
                from espm.keystore.updater import KeystoreUpdater

                self.updater = KeystoreUpdater(self.config.keystore, self.reaper, self.startup)
            if not self._exit.done():
                # Before the first keystore build, not after: a long one (minutes with a 6.x
                # tool and many secrets) must not fail the liveness probes meanwhile.
                await self._start_api()
            if not started and not self._exit.done():
                code = await self._first_start()
                if code is not None:
                    return code
            if self.updater is not None and not self._exit.done():
                self.updater.start_watching()
            return await self._exit
        finally:
            await self._shutdown()
            # Before the loop closes: its readers must not outlive it.
            self.forwarder.detach()
            self.reaper.close()
            self.process.detach()

    async def _first_start(self) -> int | None:
        """Build the keystore, then start the process; an exit code when the manager must stop."""
        import asyncio

        assert self._exit is not None
        if self.updater is not None:
            self.building = True
            build: asyncio.Future[Any] = asyncio.ensure_future(self.updater.initial_build())
            exiting: asyncio.Future[Any] = self._exit
            try:
                await asyncio.wait([build, exiting], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.building = False
            if self._exit.done():
                build.cancel()
                return self._exit.result()
        if self.kept_down:
            log.info(
                "the state file records %s: waiting for POST /%s/start",
                self.recorded.value if self.recorded else "",
                self.config.process.name,
            )
            return None
        outcome = self.process.start()
        if outcome.error is not None:
            return self.process.exit_code or 1
        return None

    async def _start_api(self) -> None:
        from espm.api.routes import Router
        from espm.api.server import ApiServer

        router = Router(ManagerControl(self), self.config.process.name, self.config.http)
        self.api = ApiServer(router.route, self.config.http.host, self.tls)
        await self.api.start(self.listener)

    async def _shutdown(self) -> None:
        if self.api is not None:
            await self.api.close()
        if self.updater is not None:
            await self.updater.close()
        if self.process.pid is not None:
            # Exiting with a process still running (e.g. the manager was told to exit):
            # take its whole group with us rather than leave it to the kernel.
            with contextlib.suppress(OSError):
                os.killpg(self.process.pid, signal.SIGKILL)


class ManagerControl:
    """The manager as the API sees it (api/port.py's `Control`): readers, requests, counters.

    The manager's rules for the API's requests live here, not in the routes.
    """

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._process = manager.process

    @property
    def state(self) -> ProcessState:
        return self._process.state

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def record_error(self) -> str | None:
        return self._process.record_error

    def status(self) -> dict[str, object]:
        return self._process.status()

    def status_json(self) -> bytes:
        return self._process.status_json()

    def start(self) -> Outcome:
        if self._manager.building:
            # Elasticsearch must start with its secure settings: it starts when the build ends.
            return Outcome(error="the keystore is being built; the process starts after")
        return Outcome(self._process.start().error)

    def stop(self) -> Outcome:
        return self._signalled(self._process.stop().error)

    def kill(self) -> Outcome:
        return self._signalled(self._process.kill().error)

    def _signalled(self, error: str | None) -> Outcome:
        # A stop while a kill is under way is under way too: the state says which.
        return Outcome(error, under_way=error is None and self._process.state in SIGNALLED)

    async def ready(self) -> str | None:
        if not self._process.running:
            return f"process is {self._process.state.value}"
        return await self._manager.readiness.check()

    def keystore_status(self) -> dict[str, Any] | None:
        updater = self._manager.updater
        return updater.status() if updater is not None else None

    def counters(self) -> dict[str, int]:
        m = self._manager
        updater = m.updater
        return {
            "signals_forwarded": m.forwarder.forwarded,
            "zombies_reaped": m.reaper.orphans_reaped,
            **(m.api.counters() if m.api is not None else {}),
            "keystore_updates": updater.updates if updater else 0,
            "keystore_update_failures": updater.update_failures if updater else 0,
            "keystore_reloads": updater.reloads if updater else 0,
            "keystore_tool_runs": updater.tool.runs if updater else 0,
            "process_starts": self._process.starts,
            "readiness_checks": m.readiness_checks,
        }


def run(
    config: Config,
    startup: StartupSignals,
    env: Mapping[str, str],
    recorded: ProcessState | None,
    listener: socket.socket,
    tls: CertificateWatcher | None = None,
) -> int:
    """Run the manager until it must exit; return its exit status (signals held from then on)."""
    try:
        return _run(config, startup, env, recorded, listener, tls)
    finally:
        startup.hold_all()


def _run(
    config: Config,
    startup: StartupSignals,
    env: Mapping[str, str],
    recorded: ProcessState | None,
    listener: socket.socket,
    tls: CertificateWatcher | None = None,
) -> int:
    forwarder = SignalForwarder()
    forwarder.install()
    if config.process.reaper and os.getpid() != 1:
        try:
            set_child_subreaper()
        except OSError as err:
            log.warning("cannot become a child subreaper (%s): orphans will not be reaped", err.strerror)
    manager = Manager(config, startup, forwarder, env, recorded, listener, tls)
    startup.unblock()
    started = False
    if not config.keystore.enabled and not manager.kept_down:
        # The child first: start it before the event loop and the API are even imported.
        started = manager.start_first()
        if manager.early_exit is not None and not started:
            return manager.early_exit
    import asyncio  # only now: the child is already running

    try:
        code = asyncio.run(manager.main(started))
    except Exception:
        # A bug of ours: say so, and exit like a crashed program rather than hang the pod.
        log.exception("internal error: exiting")
        code = EXIT_INTERNAL_ERROR
    sys.stderr.flush()
    return code
