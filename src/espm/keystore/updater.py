"""The keystore updater: watch the Secret directory, plan, write the keystore, reload.

Rules of this module:
- It ties the pieces together and owns none of their work: `source` reads a snapshot, `plan`
  says what to write and remove, a writer (`tool_writer`, or the native one) changes the file all
  or nothing, `reloader` tells Elasticsearch.
- The names the updater put in the keystore are recorded beside it (names, never values), so a
  setting whose file left the directory is removed, and entries it did not write are left alone.
- One update runs at a time (this task owns them); reloads run in their own task and coalesce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from espm.config import KeystoreConfig
from espm.keystore.auto_writer import AutoWriter
from espm.keystore.elasticsearch import ElasticsearchClient
from espm.keystore.files import remove_abandoned
from espm.keystore.inotify import FolderWatch
from espm.keystore.managed import managed_path, read_managed, record_managed
from espm.keystore.native_writer import TMP_SUFFIX, NativeWriter, PasswordError, tmp_prefix
from espm.keystore.plan import make_plan
from espm.keystore.reloader import ES_POLL, Reloader
from espm.keystore.source import DATA, SourceError, read_snapshot
from espm.keystore.status import BACKOFF_CAP, FAILED_UPDATE, UPDATED, StatusBoard, UpdaterState, backoff
from espm.keystore.tool import KeystoreTool
from espm.keystore.tool_writer import WORK_PREFIX, ToolWriter
from espm.keystore.writer import KeystoreWriter, UpdateError, sha256_file
from espm.supervisor.reaper import Reaper
from espm.supervisor.signals import StartupSignals
from espm.system import heap

log = logging.getLogger("espm.keystore")

DEBOUNCE = 0.1
MAX_DEBOUNCE = 1.0


class KeystoreUpdater:
    """Keeps KEYSTORE_PATH in line with KEYSTORE_SOURCE_DIR and reloads Elasticsearch."""

    def __init__(self, config: KeystoreConfig, reaper: Reaper, startup: StartupSignals | None = None) -> None:
        self.config = config
        self.path = config.path
        self.managed_path = managed_path(config.path)
        self.tool = KeystoreTool(config.binary, config.tool_timeout, reaper, startup)
        self._tool_writer = ToolWriter(config.path, self.tool, config.es_version)
        self._native_writer = NativeWriter(config.path, config.password_file, config.es_version)
        self.writer: KeystoreWriter
        if config.writer == "tool":
            self.writer = self._tool_writer
        elif config.writer == "native":
            self.writer = self._native_writer
        else:
            self.writer = AutoWriter(self._native_writer, self._tool_writer)
        self.last_writer: str | None = None  # who wrote (or tried) last: "native" or "tool"
        self._slow_retry = False  # the last failure will not heal by itself (a wrong password)
        self.board = StatusBoard()
        self.settings: list[str] = []
        self.invalid: list[str] = []
        self.updates = 0
        self.update_failures = 0
        self._applied: dict[str, str] = {}  # name -> digest of the value now in the keystore
        self._fingerprint: str | None = None
        self._written_digest: str | None = None
        self._reloader: Reloader | None = None
        if config.reload_credentials:
            self._reloader = Reloader(
                ElasticsearchClient(config),
                self.board,
                written_digest=lambda: self._written_digest,
                update_failing=lambda: self.update_failures > 0,
                on_version=self._learn_version,
                password=self._native_writer.password,
            )
        self._changed = asyncio.Event()
        self._watch: FolderWatch | None = None
        self._swapped = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- status -----------------------------------------------------------------------------

    @property
    def state(self) -> UpdaterState:
        return self.board.state

    @property
    def reason(self) -> str:
        return self.board.reason

    @property
    def reloads(self) -> int:
        return self._reloader.reloads if self._reloader else 0

    @property
    def reload_failures(self) -> int:
        return self._reloader.failures if self._reloader else 0

    def status(self) -> dict[str, Any]:
        from espm.system.timestamps import rfc3339

        return {
            "state": self.board.state.value,
            "reason": self.board.reason,
            "at": rfc3339(self.board.at),
            "settings": list(self.settings),
            "invalid_settings": list(self.invalid),
            "updates": self.updates,
            "reloads": self.reloads,
            "writer": self.last_writer,
        }

    def _learn_version(self, version: str) -> None:
        if not self.config.es_version:
            self._tool_writer.learn_version(version)
            # Lets the native writer create a keystore that went missing, in the node's format.
            self._native_writer.es_version = version

    # -- life cycle -------------------------------------------------------------------------

    async def initial_build(self) -> None:
        """Bring the keystore in line once, before Elasticsearch starts (never raises)."""
        self._remove_leftovers()
        await self._try_update()
        if self.update_failures:
            # Even with the old keystore, a reload proves the credentials before it matters.
            self._request_reload()
        if self._reloader is not None:
            self._tasks.append(asyncio.ensure_future(self._reloader.run()))

    async def _try_update(self) -> None:
        """One update; a failure of any kind is a failed update (retried), never the end of the watch."""
        try:
            await self._update()
            self.update_failures = 0
        except UpdateError as err:
            self.update_failures += 1
            # A wrong password fails the same way until the Secret or the password file changes:
            # retried at the backoff's cap (and at once on a directory change), not in a storm.
            self._slow_retry = isinstance(err, PasswordError)
            self.board.set(UpdaterState.FAILED, f"{FAILED_UPDATE}{err}")
        except Exception as err:
            # A bug or an unforeseen error: the message names the error, never a value.
            log.error("keystore update failed unexpectedly", exc_info=True)
            self.update_failures += 1
            self.board.set(UpdaterState.FAILED, f"{FAILED_UPDATE}unexpected {type(err).__name__}")
        finally:
            heap.trim()  # the snapshot, the old and new keystore and their buffers are freed

    def start_watching(self) -> None:
        """Watch the directory (inotify) and keep the keystore in line from now on."""
        loop = asyncio.get_running_loop()
        self._watch = FolderWatch(self.config.source_dir)
        loop.add_reader(self._watch.fd, self._on_folder_event)
        log.info(
            "watching %s for changes",
            self.config.source_dir,
            extra={"file.directory": str(self.config.source_dir)},
        )
        self._tasks.append(asyncio.ensure_future(self._watch_loop()))
        if not self.update_failures:
            # A change between the initial build and now had no watch to see it: look once.
            # (After a failure, the loop's backoff decides when to try again.)
            self._changed.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._watch is not None:
            asyncio.get_running_loop().remove_reader(self._watch.fd)
            self._watch.close()

    def _on_folder_event(self) -> None:
        assert self._watch is not None
        if self._watch.read(complete=DATA.encode()):
            # Kubernetes swapped `..data`: the new version is complete, no need to wait.
            self._swapped = True
        self._changed.set()

    async def _watch_loop(self) -> None:
        while True:
            timeout = backoff(self.update_failures) if self.update_failures else None
            if timeout is not None and self._slow_retry:
                timeout = BACKOFF_CAP
            if self._watch is not None and not self._watch.watching:
                # The folder itself went away (a remount): look for it again now and then.
                timeout = min(timeout or ES_POLL, ES_POLL)
                if self._watch.rewatch():
                    self._changed.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
            await self._debounce()
            await self._try_update()

    async def _debounce(self) -> None:
        """Let a burst of events settle: wait until DEBOUNCE passes quietly, MAX_DEBOUNCE at most.

        A `..data` swap ends the wait at once: it is Kubernetes saying the new version is complete.
        """
        deadline = time.monotonic() + MAX_DEBOUNCE
        while not self._swapped and time.monotonic() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), DEBOUNCE)
            except TimeoutError:
                break  # quiet for DEBOUNCE
        self._swapped = False
        self._changed.clear()

    # -- one update -------------------------------------------------------------------------

    async def _update(self) -> None:
        """Bring the keystore in line with the directory, if anything really changed."""
        try:
            snapshot = read_snapshot(self.config.source_dir)
        except SourceError as err:
            raise UpdateError(str(err)) from None
        if snapshot.left_out != self.invalid:
            self._log_left_out(snapshot.invalid, snapshot.outside)
        self.invalid = snapshot.left_out
        fingerprint = snapshot.fingerprint()
        if fingerprint == self._fingerprint and not self.update_failures:
            return
        digests = {name: snapshot.digest(name) for name in snapshot.names}
        # Not the file this updater wrote last (first run, or changed behind its back: a hand-made
        # `create`, a restore): what it holds of ours is unknown.
        ours = self._written_digest is not None and self._current_digest() == self._written_digest
        plan = make_plan(digests, self._applied if ours else None, self._read_managed())
        if plan.changes:
            self._write_managed(plan.record)
            started = time.monotonic()
            try:
                written = await self.writer.write(snapshot.values, plan.write, plan.remove)
            finally:
                self.last_writer = self.writer.name
            if written:
                self._written_digest = sha256_file(self.path)
                log.info(
                    "keystore updated (%s writer): %d added or changed, %d removed",
                    self.writer.name,
                    len(plan.write),
                    len(plan.remove),
                    extra={"event.duration": int((time.monotonic() - started) * 1e9)},
                )
                self.updates += 1
                self._request_reload()
        elif self.updates == 0 and self.reloads == 0:
            self._request_reload()  # first sight: still prove the credentials early
        self._write_managed(set(digests))
        self._applied = digests
        self._fingerprint = fingerprint
        self.settings = snapshot.names
        # A reload that failed and waits for its retry stays the news: the new keystore is in
        # place, but Elasticsearch has not loaded it.
        first = self.board.state is UpdaterState.NOT_INITIALIZED
        if (plan.changes or self.update_failures or first) and not self.reload_failures:
            self.board.set(UpdaterState.RUNNING, UPDATED)

    def _log_left_out(self, invalid: tuple[str, ...], outside: tuple[str, ...]) -> None:
        for name in invalid:
            log.warning(
                "secret %r left out: not a valid secure setting name "
                "([A-Za-z0-9_.-]+, not beginning with '-')",
                name,
                extra={"setting.name": name},
            )
        for name in outside:
            log.warning(
                "secret %r left out: it is a link to a file outside %s",
                name,
                self.config.source_dir,
                extra={"setting.name": name},
            )

    def _current_digest(self) -> str | None:
        try:
            return sha256_file(self.path)
        except OSError:
            return None

    def _read_managed(self) -> set[str]:
        names, problem = read_managed(self.managed_path)
        if problem:
            log.warning("%s", problem)
        return names

    def _write_managed(self, names: set[str] | frozenset[str]) -> None:
        if names == self._read_managed() and self.managed_path.exists():
            return
        record_managed(self.managed_path, names)

    def _remove_leftovers(self) -> None:
        """Before the first build: what crashed runs left beside the keystore."""
        # A work folder (a keystore copy, maybe fallback value files) whose holder died: its lock
        # is free. A live manager's in another PID namespace keeps its lock, and its folder.
        for name in remove_abandoned(self.path.parent, WORK_PREFIX):
            log.info("removed %s, left by an update that did not finish", name)
        # The native writer's temporary file (encrypted, but a copy all the same), likewise.
        for name in remove_abandoned(self.path.parent, tmp_prefix(self.path), TMP_SUFFIX, directory=False):
            log.info("removed %s, left by an update that did not finish", name)
        # The tool's (and Elasticsearch's) own temporary file, left by a crashed save: both create
        # it exclusively, so while it is there every save fails, the node's start-up rewrite too.
        stale = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            log.warning("removed %s, left by a keystore save that did not finish", stale)

    def _request_reload(self) -> None:
        if self._reloader is not None:
            self._reloader.request()
