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
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from espm.config import KeystoreConfig
from espm.keystore.elasticsearch import ElasticsearchClient, Unreachable
from espm.keystore.files import LockedFolder, fsync_dir, remove_abandoned, replace_atomically
from espm.keystore.inotify import FolderWatch
from espm.keystore.source import DATA, Snapshot, SourceError, read_snapshot
from espm.keystore.tool import EXIT_USAGE, KeystoreTool, ToolRun
from espm.keystore.values import value_files
from espm.supervisor.reaper import Reaper
from espm.supervisor.signals import StartupSignals

log = logging.getLogger("espm.keystore")

KEYSTORE_NAME = "elasticsearch.keystore"
WORK_PREFIX = ".espm-keystore-"
# Inside a work folder: the tool's ES_TMPDIR, and value files where memfds are not to be had.
TMP_FOLDER = "tmp"
VALUES_FOLDER = "values"
DEBOUNCE = 0.1
MAX_DEBOUNCE = 1.0
BACKOFF_FIRST = 2.0
BACKOFF_CAP = 60.0
ES_POLL = 1.0
EXIT_NOT_IN_KEYSTORE = 78
# Fixed names for the probe that asks the tool whether it takes several pairs per run.
PROBE_PAIRS = ("espm.probe.first", "espm.probe.second")

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
        self._remove_leftovers()
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
        if snapshot.left_out != self.invalid:
            for name in snapshot.invalid:
                log.warning(
                    "secret %r left out: not a valid secure setting name "
                    "([A-Za-z0-9_.-]+, not beginning with '-')",
                    name,
                    extra={"setting.name": name},
                )
            for name in snapshot.outside:
                log.warning(
                    "secret %r left out: it is a link to a file outside %s",
                    name,
                    self.config.source_dir,
                    extra={"setting.name": name},
                )
        self.invalid = snapshot.left_out
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
            work = LockedFolder(parent, WORK_PREFIX)
        except OSError as err:
            raise UpdateError(f"cannot create a work folder in {parent}: {err.strerror or err}") from None
        try:
            conf = work.path
            target = conf / KEYSTORE_NAME
            # The JVM's own temporary files (6.8 leaves a folder behind on every run) go here.
            (conf / TMP_FOLDER).mkdir(mode=0o700)
            old = self._stat_current()
            if old is not None:
                shutil.copy2(self.path, target)
            if to_add:
                await self._add_files(snapshot, to_add, conf)
            if to_remove and target.is_file():
                await self._remove(to_remove, conf)
            if not target.is_file():
                if old is None and not to_add:
                    return False  # no keystore, and nothing to put in one: nothing to remove either
                raise UpdateError("the tool reported success but wrote no keystore")
            if old is not None:
                os.chmod(target, old.st_mode & 0o7777)
                _keep_owner(target, old)
            with target.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(target, self.path)
            fsync_dir(parent)
            self._written_digest = sha256_file(self.path)
            return True
        except OSError as err:
            raise UpdateError(f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")) from None
        finally:
            work.remove()

    async def _add_files(self, snapshot: Snapshot, names: list[str], conf: Path) -> None:
        if self._batch is not False and len(names) > 1:
            for chunk in _chunks(names, _descriptor_budget()):
                run = await self._add_run(snapshot, chunk, conf)
                if run.ok:
                    self._batch = True
                    continue
                if not (run.exit_code == EXIT_USAGE and self._batch is None):
                    raise UpdateError(run.describe())
                # A usage error: a tool older than 7.7 (one pair per run), or something in this
                # input. Only a run whose input is fixed tells the two apart; the input never decides.
                if await self._probe_batches(conf) is not False:
                    raise UpdateError(run.describe())
                log.info("the keystore tool takes one setting per run (before 7.7): adding one by one")
                self._batch = False
                break
            else:
                return
        for name in names:
            self._check(await self._add_run(snapshot, [name], conf))

    async def _add_run(self, snapshot: Snapshot, names: list[str], conf: Path) -> ToolRun:
        """One `add-file` run for `names`; `--` ends the tool's options, so whatever a name looks
        like it is never read as one (names beginning with `-` are left out before this: a belt)."""
        with value_files(snapshot.values, names, conf / VALUES_FOLDER) as (pairs, fds):
            return await self.tool.run(
                ["add-file", "-f", "--", *_flat(pairs)], conf, tmp_dir=conf / TMP_FOLDER, pass_fds=fds
            )

    async def _probe_batches(self, conf: Path) -> bool | None:
        """Whether the tool takes several add-file pairs, asked with fixed names in a scratch folder.

        None when the probe itself failed otherwise: nothing is learned then.
        """
        folder = conf / "probe"
        folder.mkdir(mode=0o700)
        value = folder / "value"
        value.write_bytes(b"")
        run = await self.tool.run(
            ["add-file", "-f", "--", *_flat([(n, str(value)) for n in PROBE_PAIRS])],
            folder,
            tmp_dir=conf / TMP_FOLDER,
        )
        if run.ok:
            self._batch = True
            return True
        if run.exit_code == EXIT_USAGE:
            return False
        log.warning(
            "cannot tell whether the keystore tool takes several settings per run: %s", run.describe()
        )
        return None

    async def _remove(self, names: list[str], work: Path) -> None:
        run = await self.tool.run(["remove", "--", *names], work, tmp_dir=work / TMP_FOLDER)
        if run.ok:
            return
        if run.exit_code != EXIT_NOT_IN_KEYSTORE:
            raise UpdateError(run.describe())
        # Some were already gone (the keystore was changed behind our back): remove the rest.
        listing = self._check(await self.tool.run(["list"], work, tmp_dir=work / TMP_FOLDER))
        present = set(listing.stdout.split())
        rest = [n for n in names if n in present]
        if rest:
            self._check(await self.tool.run(["remove", "--", *rest], work, tmp_dir=work / TMP_FOLDER))

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
        try:
            # Through a temporary file that a failure (a full disk) never leaves behind, with the
            # folder's fsync: the record must be durable before the keystore gets the names.
            replace_atomically(self.managed_path, (json.dumps(sorted(names)) + "\n").encode(), 0o644)
        except OSError as err:
            raise UpdateError(
                f"cannot record the managed setting names in {self.managed_path}: {err.strerror or err}"
            ) from None

    def _remove_leftovers(self) -> None:
        """Before the first build: what crashed runs left beside the keystore."""
        # A work folder (a keystore copy, maybe fallback value files) whose holder died: its lock
        # is free. A live manager's in another PID namespace keeps its lock, and its folder.
        for name in remove_abandoned(self.path.parent, WORK_PREFIX):
            log.info("removed %s, left by an update that did not finish", name)
        # The tool's (and Elasticsearch's) own temporary file, left by a crashed save: both create
        # it exclusively, so while it is there every save fails, the node's start-up rewrite too.
        stale = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            log.warning("removed %s, left by a keystore save that did not finish", stale)

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
            try:
                answer = await self._client.get_root()
            except Unreachable:
                answer = None
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
            if self.state != "waiting":
                self._set_reload_state("waiting", WAITING)
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


def _flat(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """`NAME PATH NAME PATH ...`, as add-file takes them."""
    return [part for pair in pairs for part in pair]


def _chunks(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]


def _descriptor_budget() -> int:
    """How many value descriptors one run may carry: half of what the soft limit leaves."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(1, soft // 2 - 64)


def _keep_owner(target: Path, old: os.stat_result) -> None:
    """Give the new keystore the old one's owner; the tool never sees that owner (see README)."""
    if (old.st_uid, old.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.chown(target, old.st_uid, old.st_gid)
    except PermissionError:
        raise UpdateError(
            f"cannot keep the keystore's owner (uid {old.st_uid}, gid {old.st_gid}): espm runs as uid "
            f"{os.geteuid()} and may not give a file away; run espm as uid {old.st_uid} or as root"
        ) from None
