"""The readiness probe: does Elasticsearch answer GET / with the updater's credentials and CA.

Kubernetes probes often and from many kubelets' retries; the answer is cached for at most a
second and never more than one check is in flight, so the probe costs Elasticsearch one request
per second at most, whatever the probe rate.
"""

from __future__ import annotations

import asyncio
import time

from espm.config import KeystoreConfig
from espm.keystore.elasticsearch import ElasticsearchClient, Unreachable

MAX_AGE = 1.0
# A kubelet gives a probe 1 s by default: a check of an Elasticsearch that does not answer ends
# before that, so the probe gets 503 with the reason rather than a timeout of its own.
CHECK_TIMEOUT = 0.8


class ReadinessProbe:
    """Checks Elasticsearch's GET /; None means ready, a string says why not."""

    def __init__(self, config: KeystoreConfig, timeout: float = CHECK_TIMEOUT) -> None:
        self._client = ElasticsearchClient(config, request_timeout=timeout, connect_timeout=timeout)
        self._checked_at = -MAX_AGE
        self._reason: str | None = "not checked yet"
        self._inflight: asyncio.Future[str | None] | None = None
        self.checks = 0

    async def check(self) -> str | None:
        if time.monotonic() - self._checked_at < MAX_AGE:
            return self._reason
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._check())
        # Shielded: a client that hangs up must not cancel the check the others wait for.
        return await asyncio.shield(self._inflight)

    async def _check(self) -> str | None:
        self.checks += 1
        try:
            answer = await self._client.get_root()
            if answer.status == 200:
                reason = None
            else:
                reason = f"Elasticsearch answered GET / with HTTP {answer.status}"
        except Unreachable as err:
            reason = str(err)  # names the fault: refused, reset, timeout, TLS check, answer
        except Exception as err:
            # Whatever went wrong, the next probe must get a fresh check, not this one forever.
            reason = f"the readiness check failed: {type(err).__name__}: {err}"
        finally:
            self._inflight = None
        self._reason = reason
        self._checked_at = time.monotonic()
        return reason
