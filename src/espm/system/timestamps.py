"""Times as people and log pipelines read them: RFC 3339 in UTC, to the millisecond."""

from __future__ import annotations

import math
import time


def rfc3339(at: float) -> str:
    """`at` (seconds since the epoch) as `2026-12-01T18:41:29.123Z`.

    Rounded to the microsecond first, as `datetime.fromtimestamp` does, then cut to milliseconds:
    `1764614400.123` is stored as 1764614400.12299990..., which must still read `.123`.
    """
    fraction, whole = math.modf(at)
    micros = round(fraction * 1_000_000)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1
    elif micros < 0:
        micros += 1_000_000
        whole -= 1
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{seconds}.{micros // 1000:03d}Z"
