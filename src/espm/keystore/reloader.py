"""The reload loop: wait until Elasticsearch answers, ask it to reload its secure settings, check
the answer, and retry a failure with backoff; requests made meanwhile coalesce into one reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from espm.keystore.answers import error_reason, reload_problems, root_version
from espm.keystore.elasticsearch import ElasticsearchClient, Unreachable
from espm.keystore.status import FAILED_RELOAD, RELOADED, WAITING, StatusBoard, UpdaterState, backoff
from espm.keystore.writer import UpdateError
from espm.system import heap

log = logging.getLogger("espm.keystore")

ES_POLL = 1.0
# Answers that mean "not ready yet" (6.x answers 503 without a master), not "refused".
NOT_READY = (502, 503, 504)


class Reloader:
    """Owns the reloads; the updater asks for one after each update it makes."""

    def __init__(
        self,
        client: ElasticsearchClient,
        board: StatusBoard,
        written_digest: Callable[[], str | None],
        update_failing: Callable[[], bool],
        on_version: Callable[[str], None],
        password: Callable[[], str] = str,
    ) -> None:
        self.reloads = 0
        self.failures = 0
        self._client = client
        self._board = board
        self._written_digest = written_digest
        self._update_failing = update_failing
        self._on_version = on_version
        self._password = password
        self._needed = asyncio.Event()

    def request(self) -> None:
        self._needed.set()

    async def run(self) -> None:
        while True:
            await self._needed.wait()
            try:
                await self._reload()
                self.failures = 0
                continue
            except UpdateError as err:
                reason = str(err)
            except Exception as err:
                # Unforeseen: said, and retried like any failure; the loop must not die of it.
                log.error("reload failed unexpectedly", exc_info=True)
                reason = f"unexpected {type(err).__name__}: {err}"
            finally:
                heap.trim()  # the update and this reload are over: their freed pages go back
            self.failures += 1
            self._set(UpdaterState.FAILED, FAILED_RELOAD + reason)
            self._needed.set()
            await asyncio.sleep(backoff(self.failures))

    def _set(self, state: UpdaterState, reason: str) -> None:
        """The reload's news, unless an update is failing: that stays in the status until fixed
        (a "reloaded" or "waiting" there would hide that the keystore is behind the Secret)."""
        if not self._update_failing():
            self._board.set(state, reason)

    async def _wait_for_elasticsearch(self) -> None:
        while True:
            waiting = WAITING
            try:
                answer = await self._client.get_root()
            except Unreachable as err:
                answer = None
                waiting = f"{WAITING}: {err}"  # the fault, named by the client
            if answer is not None and answer.status == 200:
                version = root_version(answer.json())
                if version is not None:
                    self._on_version(version)
                return
            if answer is not None and answer.status not in NOT_READY:
                raise UpdateError(f"GET / answered HTTP {answer.status}{error_reason(answer.json())}")
            if (self._board.state, self._board.reason) != (UpdaterState.WAITING, waiting):
                self._set(UpdaterState.WAITING, waiting)
            await asyncio.sleep(ES_POLL)

    async def _reload(self) -> None:
        await self._wait_for_elasticsearch()
        # Only now: updates made while Elasticsearch was not answering are all in the file this
        # reload reads, so they coalesce into it; one made from here on asks for another reload.
        self._needed.clear()
        written = self._written_digest()
        try:
            answer = await self._client.reload_secure_settings(self._password())
        except Unreachable as err:
            raise UpdateError(str(err)) from None
        problems = reload_problems(answer.status, answer.json(), written)
        if problems:
            raise UpdateError("; ".join(problems))
        self.reloads += 1
        self._set(UpdaterState.RUNNING, RELOADED)
