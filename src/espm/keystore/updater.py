"""The keystore updater: watch the Secret directory, rebuild the keystore on a copy, reload.

Rules of this module:
- The keystore at KEYSTORE_PATH is only ever replaced by a rename of a complete file: an update
  works in a fresh folder beside it (ES_PATH_CONF for the tool) and a failure leaves the old file.
- The names the updater put in the keystore are recorded beside it (names, never values), so a
  setting whose file left the directory is removed, and entries it did not write are left alone.
- Values are only ever written to 0600 files inside the 0700 work folder, and handed to the tool
  with `add-file`; the folder is removed after every update, failed or not.
- One update runs at a time (this task owns them); reloads run in their own task and coalesce.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from espm.config import KeystoreConfig
from espm.keystore.elasticsearch import ElasticsearchClient, Unreachable
from espm.keystore.inotify import FolderWatch
from espm.keystore.source import DATA, Snapshot, SourceError, read_snapshot
from espm.keystore.tool import EXIT_USAGE, KeystoreTool, ToolRun
from espm.supervisor.reaper import Reaper
from espm.supervisor.signals import StartupSignals

log = logging.getLogger("espm.keystore")

KEYSTORE_NAME = "elasticsearch.keystore"
WORK_PREFIX = ".espm-keystore-"
# Where value files go when the pod has it: tmpfs, so a copy of a secret never reaches a disk
# (and creating a hundred small files is ten times faster than on the config volume).
VALUES_ROOT = Path("/dev/shm")
VALUES_PREFIX = ".espm-values-"
DEBOUNCE = 0.1
MAX_DEBOUNCE = 1.0
BACKOFF_FIRST = 2.0
BACKOFF_CAP = 60.0
ES_POLL = 1.0
EXIT_NOT_IN_KEYSTORE = 78

CREATED = "Keystore updater created"
WAITING = "Waiting for Elasticsearch to be ready"
UPDATED = "Keystore updated"
RELOADED = "Secure settings reloaded"


def backoff(failures: int) -> float:
    """Capped exponential backoff with jitter: about 2 s, 4 s, 8 s ... 60 s."""
    delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** max(0, failures - 1))
    return delay * random.uniform(0.8, 1.2)


def batches_pairs(version: str) -> bool:
    """True when the tool takes several add-file pairs in one run (7.7 and later)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        return True
    return (int(match.group(1)), int(match.group(2))) >= (7, 7)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(65536):
            h.update(chunk)
    return h.hexdigest()


class UpdateError(Exception):
    """An update failed; the message says what failed and what the tool said."""


class KeystoreUpdater:
    """Keeps KEYSTORE_PATH in line with KEYSTORE_SOURCE_DIR and reloads Elasticsearch."""

    def __init__(self, config: KeystoreConfig, reaper: Reaper, startup: StartupSignals | None = None) -> None:
        self.config = config
        self.path = config.path
        self.managed_path = config.path.with_name(config.path.name + ".managed")
        self.tool = KeystoreTool(config.binary, config.tool_timeout, reaper, startup)
        self.state = "notInitialized"
        self.reason = CREATED
        self.at = time.time()
        self.settings: list[str] = []
        self.invalid: list[str] = []
        self.updates = 0
        self.reloads = 0
        self.update_failures = 0
        self.reload_failures = 0
        self._applied: dict[str, str] = {}  # name -> digest of the value now in the keystore
        self._fingerprint: str | None = None
        self._written_digest: str | None = None
        self._batch: bool | None = batches_pairs(config.es_version) if config.es_version else None
        self._client = ElasticsearchClient(config) if config.reload_credentials else None
        self._changed = asyncio.Event()
        self._reload_needed = asyncio.Event()
        self._watch: FolderWatch | None = None
        self._swapped = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- status -----------------------------------------------------------------------------

    def _set(self, state: str, reason: str) -> None:
        if (state, reason) != (self.state, self.reason):
            level = logging.WARNING if state == "failed" else logging.INFO
            log.log(level, "keystore updater %s: %s", state, reason, extra={"event.action": state})
        self.state = state
        self.reason = reason
        self.at = time.time()

    def status(self) -> dict[str, Any]:
        from espm.supervisor.process import rfc3339

        return {
            "state": self.state,
            "reason": self.reason,
            "at": rfc3339(self.at),
            "settings": list(self.settings),
            "invalid_settings": list(self.invalid),
            "updates": self.updates,
            "reloads": self.reloads,
        }

    # -- life cycle -------------------------------------------------------------------------

    async def initial_build(self) -> None:
        """Bring the keystore in line once, before Elasticsearch starts (never raises)."""
        self._remove_stale_work_folders()
        await self._try_update()
        if self.update_failures:
            # Even with the old keystore, a reload proves the credentials before it matters.
            self._request_reload()
        self._tasks.append(asyncio.ensure_future(self._reload_loop()))

    async def _try_update(self) -> None:
        """One update; a failure of any kind is a failed update (retried), never the end of the watch."""
        try:
            await self._update()
            self.update_failures = 0
        except UpdateError as err:
            self.update_failures += 1
            self._set("failed", f"Failed to update keystore: {err}")
        except Exception as err:
            # A bug or an unforeseen error: the message names the error, never a value.
            log.error("keystore update failed unexpectedly", exc_info=True)
            self.update_failures += 1
            self._set("failed", f"Failed to update keystore: unexpected {type(err).__name__}")

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
        if list(snapshot.invalid) != self.invalid:
            for name in snapshot.invalid:
                log.warning(
                    "secret %r left out: not a valid secure setting name [A-Za-z0-9_.-]+",
                    name,
                    extra={"setting.name": name},
                )
        self.invalid = list(snapshot.invalid)
        fingerprint = snapshot.fingerprint()
        if fingerprint == self._fingerprint and not self.update_failures:
            return
        managed = self._read_managed()
        if self._written_digest is None or self._current_digest() != self._written_digest:
            # Not the file this updater wrote last (first run, or changed behind its back: a
            # hand-made `create`, a restore): what it holds of ours is unknown, so add it all.
            self._applied = {}
        to_add = [n for n in snapshot.names if self._applied.get(n) != snapshot.digest(n)]
        to_remove = sorted(managed - set(snapshot.names))
        changed = bool(to_add or to_remove)
        if changed:
            # Recorded before the keystore gets them: a crash after the rename must not leave a
            # setting in the keystore that no record says is ours (it could never be removed).
            self._write_managed(managed | set(snapshot.names))
            started = time.monotonic()
            if await self._rebuild(snapshot, to_add, to_remove):
                log.info(
                    "keystore updated: %d added or changed, %d removed",
                    len(to_add),
                    len(to_remove),
                    extra={"event.duration": int((time.monotonic() - started) * 1e9)},
                )
                self.updates += 1
                self._request_reload()
        elif self.updates == 0 and self.reloads == 0:
            self._request_reload()  # first sight: still prove the credentials early
        self._write_managed(set(snapshot.names))
        self._applied = {n: snapshot.digest(n) for n in snapshot.names}
        self._fingerprint = fingerprint
        self.settings = snapshot.names
        # A reload that failed and waits for its retry stays the news: the new keystore is in
        # place, but Elasticsearch has not loaded it.
        if (changed or self.update_failures or self.state == "notInitialized") and not self.reload_failures:
            self._set("running", UPDATED)

    async def _rebuild(self, snapshot: Snapshot, to_add: list[str], to_remove: list[str]) -> bool:
        """Write the keystore with `to_add` added and `to_remove` removed; False if none was due."""
        parent = self.path.parent
        try:
            work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent))
        except OSError as err:
            raise UpdateError(f"cannot create a work folder in {parent}: {err.strerror}") from None
        values: Path | None = None
        try:
            target = work / KEYSTORE_NAME
            old = self._stat_current()
            if old is not None:
                shutil.copy2(self.path, target)
            values = self._values_folder(work)
            pairs: list[tuple[str, str]] = []
            for name in to_add:
                file = values / name
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(snapshot.values[name])
                pairs.append((name, str(file)))
            if pairs:
                await self._add_files(pairs, work)
            if to_remove and target.is_file():
                await self._remove(to_remove, work)
            if not target.is_file():
                if old is None and not pairs:
                    return False  # no keystore, and nothing to put in one: nothing to remove either
                raise UpdateError("the tool reported success but wrote no keystore")
            if old is not None:
                os.chmod(target, old.st_mode & 0o7777)
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    os.chown(target, old.st_uid, old.st_gid)
            with target.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(target, self.path)
            _fsync_dir(parent)
            self._written_digest = sha256_file(self.path)
            return True
        except OSError as err:
            raise UpdateError(f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if values is not None and not values.is_relative_to(work):
                shutil.rmtree(values, ignore_errors=True)

    @staticmethod
    def _values_folder(work: Path) -> Path:
        """A fresh 0700 folder for the value files: in /dev/shm if we may write there."""
        if os.access(VALUES_ROOT, os.W_OK | os.X_OK):
            try:
                return Path(tempfile.mkdtemp(prefix=f"{VALUES_PREFIX}{os.getpid()}-", dir=VALUES_ROOT))
            except OSError:
                pass  # full, or not what it seemed: the work folder will do
        folder = work / "values"
        folder.mkdir(mode=0o700)
        return folder

    async def _add_files(self, pairs: list[tuple[str, str]], work: Path) -> None:
        if self._batch is not False and len(pairs) > 1:
            args = ["add-file", "-f"]
            for name, file in pairs:
                args += [name, file]
            run = await self.tool.run(args, work)
            if run.ok:
                self._batch = True
                return
            if not (run.exit_code == EXIT_USAGE and self._batch is None):
                raise UpdateError(run.describe())
            # A tool older than 7.7 takes one pair per run; remember it for the next updates.
            log.info("the keystore tool takes one setting per run (before 7.7): adding one by one")
            self._batch = False
        for name, file in pairs:
            self._check(await self.tool.run(["add-file", "-f", name, file], work))

    async def _remove(self, names: list[str], work: Path) -> None:
        run = await self.tool.run(["remove", *names], work)
        if run.ok:
            return
        if run.exit_code != EXIT_NOT_IN_KEYSTORE:
            raise UpdateError(run.describe())
        # Some were already gone (the keystore was changed behind our back): remove the rest.
        listing = self._check(await self.tool.run(["list"], work))
        present = set(listing.stdout.split())
        rest = [n for n in names if n in present]
        if rest:
            self._check(await self.tool.run(["remove", *rest], work))

    @staticmethod
    def _check(run: ToolRun) -> ToolRun:
        if not run.ok:
            raise UpdateError(run.describe())
        return run

    def _current_digest(self) -> str | None:
        try:
            return sha256_file(self.path)
        except OSError:
            return None

    def _stat_current(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _read_managed(self) -> set[str]:
        try:
            names = json.loads(self.managed_path.read_bytes())
            return {n for n in names if isinstance(n, str)}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError):
            log.warning("cannot read %s: removed secrets may stay in the keystore", self.managed_path)
            return set()

    def _write_managed(self, names: set[str]) -> None:
        if names == self._read_managed() and self.managed_path.exists():
            return
        tmp = self.managed_path.with_name(f".{self.managed_path.name}.tmp")
        try:
            tmp.write_text(json.dumps(sorted(names)) + "\n")
            os.replace(tmp, self.managed_path)
        except OSError as err:
            raise UpdateError(
                f"cannot record the managed setting names in {self.managed_path}: {err.strerror or err}"
            ) from None

    def _remove_stale_work_folders(self) -> None:
        # A crash mid-update may have left one, with copies of secret values in it.
        with contextlib.suppress(OSError):
            for entry in self.path.parent.iterdir():
                if entry.name.startswith(WORK_PREFIX) and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
        # Value folders are named after the pid that made them: only a dead one's are stale.
        with contextlib.suppress(OSError):
            for entry in VALUES_ROOT.iterdir():
                if not entry.name.startswith(VALUES_PREFIX) or entry.stat().st_uid != os.getuid():
                    continue
                owner = entry.name.removeprefix(VALUES_PREFIX).split("-", 1)[0]
                if owner.isdigit() and not _alive(int(owner)):
                    shutil.rmtree(entry, ignore_errors=True)

    # -- reload -----------------------------------------------------------------------------

    def _request_reload(self) -> None:
        if self._client is not None:
            self._reload_needed.set()

    async def _reload_loop(self) -> None:
        if self._client is None:
            return
        while True:
            await self._reload_needed.wait()
            try:
                await self._reload()
                self.reload_failures = 0
                continue
            except UpdateError as err:
                reason = str(err)
            except Exception as err:
                # Unforeseen: said, and retried like any failure; the loop must not die of it.
                log.error("reload failed unexpectedly", exc_info=True)
                reason = f"unexpected {type(err).__name__}"
            self.reload_failures += 1
            self._set_reload_state("failed", f"Failed to reload secure settings: {reason}")
            self._reload_needed.set()
            await asyncio.sleep(backoff(self.reload_failures))

    async def _wait_for_elasticsearch(self) -> None:
        assert self._client is not None
        while True:
            waiting = WAITING
            try:
                answer = await self._client.get_root()
            except Unreachable as err:
                answer = None
                waiting = f"{WAITING}: {err}"  # the fault, named by the client
            if answer is not None and answer.status == 200:
                doc = answer.json()
                version = doc.get("version", {}).get("number") if isinstance(doc, dict) else None
                # What the tool itself showed (a refused batch) outranks the server's version:
                # the two can differ.
                if isinstance(version, str) and not self.config.es_version and self._batch is None:
                    self._batch = batches_pairs(version)
                return
            if answer is not None and answer.status not in (502, 503, 504):
                raise UpdateError(f"GET / answered HTTP {answer.status}{_es_reason(answer.json())}")
            if (self.state, self.reason) != ("waiting", waiting):
                self._set_reload_state("waiting", waiting)
            await asyncio.sleep(ES_POLL)

    def _set_reload_state(self, state: str, reason: str) -> None:
        """The reload's news, unless an update is failing: that stays in the status until fixed
        (a "reloaded" or "waiting" there would hide that the keystore is behind the Secret)."""
        if not self.update_failures:
            self._set(state, reason)

    async def _reload(self) -> None:
        assert self._client is not None
        await self._wait_for_elasticsearch()
        # Only now: updates made while Elasticsearch was not answering are all in the file this
        # reload reads, so they coalesce into it; one made from here on asks for another reload.
        self._reload_needed.clear()
        written = self._written_digest
        try:
            answer = await self._client.reload_secure_settings()
        except Unreachable as err:
            raise UpdateError(str(err)) from None
        doc = answer.json()
        if answer.status != 200:
            raise UpdateError(f"HTTP {answer.status}{_es_reason(doc)}")
        if not isinstance(doc, dict):
            raise UpdateError("the answer is not a JSON object")
        problems: list[str] = []
        nodes_summary = doc.get("_nodes") or {}
        failed = nodes_summary.get("failed", 0) if isinstance(nodes_summary, dict) else 0
        if failed:
            problems.append(f"{failed} node(s) failed")
            for failure in nodes_summary.get("failures") or []:
                if isinstance(failure, dict):
                    problems.append(str(failure.get("reason") or failure))
        nodes = doc.get("nodes") or {}
        for node_id, node in nodes.items() if isinstance(nodes, dict) else []:
            if not isinstance(node, dict):
                continue
            label = node.get("name") or node_id
            exc = node.get("reload_exception")
            if exc:
                reason = exc.get("reason") if isinstance(exc, dict) else exc
                problems.append(f"node {label}: {reason}")
            digest = node.get("keystore_digest")
            if digest is not None and written and digest != written:
                problems.append(
                    f"node {label} loaded a keystore with digest {digest}, not the one written ({written})"
                )
        if problems:
            raise UpdateError("; ".join(problems))
        self.reloads += 1
        self._set_reload_state("running", RELOADED)


def _es_reason(doc: Any) -> str:
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and error.get("reason"):
            return f": {error['reason']}"
        if isinstance(error, str):
            return f": {error}"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
