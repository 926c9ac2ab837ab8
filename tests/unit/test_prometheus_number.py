"""/metrics sample values: integers as integers, other numbers at full precision, NaN and Inf by name."""

from __future__ import annotations

import pytest

from espm.api.debug import prometheus_number


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (0.0, "0"),
        (12.0, "12"),
        (25_165_824.0, "25165824"),  # %g: 2.51658e+07
        (1_764_612_551.234567, "1764612551.234567"),  # %g: 1.76461e+09, up to 5,000 s off
        (0.5, "0.5"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
    ],
)
def test_prometheus_number(value: float, text: str) -> None:
    assert prometheus_number(value) == text
    if text not in ("NaN", "+Inf", "-Inf"):
        assert float(text) == value  # nothing lost
