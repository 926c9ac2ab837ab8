"""RFC 3339 times: UTC, milliseconds, and the millisecond a person wrote is the one shown."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from espm.system.timestamps import rfc3339


@pytest.mark.parametrize(
    ("at", "shown"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (951782400.5, "2000-02-29T00:00:00.500Z"),  # a leap day
        # Stored as 1764614400.12299990...: a plain `at % 1 * 1000` cut reads .122.
        (1764614400.123, "2025-12-01T18:40:00.123Z"),
        (1764614400.9999996, "2025-12-01T18:40:01.000Z"),  # rounds into the next second
        (1764614400.0009, "2025-12-01T18:40:00.000Z"),  # then cut, not rounded, to the ms
        (-0.5, "1969-12-31T23:59:59.500Z"),  # before the epoch, still forward within the second
    ],
)
def test_a_time_is_shown_in_utc_to_the_millisecond(at: float, shown: str) -> None:
    assert rfc3339(at) == shown


@given(st.floats(min_value=-(2**31), max_value=2**34, allow_nan=False))
def test_it_agrees_with_datetime(at: float) -> None:
    expected = dt.datetime.fromtimestamp(at, tz=dt.UTC).isoformat(timespec="milliseconds")
    assert rfc3339(at) == expected.replace("+00:00", "Z")
