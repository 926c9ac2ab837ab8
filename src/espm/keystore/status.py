"""The keystore updater's states and reasons, and the board that holds the current ones."""

from __future__ import annotations

import enum
import logging
import os
import time

log = logging.getLogger("espm.keystore")

CREATED = "Keystore updater created"
WAITING = "Waiting for Elasticsearch to be ready"
UPDATED = "Keystore updated"
RELOADED = "Secure settings reloaded"
FAILED_UPDATE = "Failed to update keystore: "
FAILED_RELOAD = "Failed to reload secure settings: "

BACKOFF_FIRST = 2.0
BACKOFF_CAP = 60.0


class UpdaterState(enum.StrEnum):
    """The states `/keystore/status` reports, named as the original updater named them."""

    NOT_INITIALIZED = "notInitialized"
    WAITING = "waiting"
    RUNNING = "running"
    FAILED = "failed"


def backoff(failures: int) -> float:
    """Capped exponential backoff with jitter: about 2 s, 4 s, 8 s ... 60 s."""
    delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** max(0, failures - 1))
    # The jitter from os.urandom: the random module costs the running manager 0.2 MiB of RSS.
    return delay * (0.8 + 0.4 * int.from_bytes(os.urandom(2)) / 0xFFFF)


class StatusBoard:
    """The current state and reason, and when they were set; each change is logged once."""

    def __init__(self) -> None:
        self.state = UpdaterState.NOT_INITIALIZED
        self.reason = CREATED
        self.at = time.time()

    def set(self, state: UpdaterState, reason: str) -> None:
        if (state, reason) != (self.state, self.reason):
            level = logging.WARNING if state is UpdaterState.FAILED else logging.INFO
            log.log(
                level, "keystore updater %s: %s", state.value, reason, extra={"event.action": state.value}
            )
        self.state = state
        self.reason = reason
        self.at = time.time()
