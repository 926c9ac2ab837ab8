"""The API's limits: the documented defaults, and the private variable the black-box tests use."""

from __future__ import annotations

import pytest

from espm.api.server import TEST_LIMITS_VARIABLE, Limits


def test_the_defaults_are_the_documented_limits() -> None:
    # SPEC: a client that does not finish its request within 10 s is dropped; README: idle
    # keep-alive connections are closed after 5 s; at most 512 connections, 16 KiB heads, 1 MiB bodies.
    limits = Limits.from_environ({})
    assert limits == Limits()
    assert (limits.request_timeout, limits.idle_timeout, limits.sweep_interval) == (10.0, 5.0, 1.0)
    assert (limits.max_connections, limits.max_head, limits.max_body) == (512, 16 * 1024, 1024 * 1024)


def test_the_test_variable_sets_only_what_it_names() -> None:
    limits = Limits.from_environ(
        {TEST_LIMITS_VARIABLE: "request_timeout=1.5, idle_timeout=0.5,max_connections=9"}
    )
    assert limits == Limits(request_timeout=1.5, idle_timeout=0.5, max_connections=9)
    assert isinstance(limits.max_connections, int)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("request_timout=1", "'request_timout' is not one of max_head, "),
        ("idle_timeout=soon", "idle_timeout='soon' is not a number"),
        ("max_connections=1.5", "max_connections='1.5' is not a number"),
        ("sweep_interval=0", "sweep_interval='0' is not positive"),
    ],
)
def test_a_bad_value_is_named(text: str, error: str) -> None:
    with pytest.raises(ValueError, match="^" + TEST_LIMITS_VARIABLE + ": " + error.replace(".", r"\.")):
        Limits.from_environ({TEST_LIMITS_VARIABLE: text})
