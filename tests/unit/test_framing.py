"""The pure framing checks: where a request head ends, and which heads are refused."""

from __future__ import annotations

import pytest

from espm.api.framing import BARE_LF, BOTH, FOLDED, MANY_LENGTHS, TE_IN_1_0, head_fault, scan_head

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("seen", "data", "expected"),
    [
        (b"", HEAD + b"rest", (len(HEAD), True, None)),
        (b"", b"GET / HTTP/1.1\r\nHo", (18, False, None)),
        (b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r\nbody", (3, True, None)),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n", (2, True, None)),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r", b"\nbody", (1, True, None)),
        (b"", b"GET / HTTP/1.1\nHost: x\r\n\r\n", (0, False, BARE_LF)),
        (b"GET / HTTP/1.1", b"\n", (0, False, BARE_LF)),
        (b"", b"\n", (0, False, BARE_LF)),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", b"\n", (0, False, BARE_LF)),
        (b"", b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", (0, False, FOLDED)),
        (b"", b"GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n", (0, False, FOLDED)),
        (b"GET / HTTP/1.1\r\nA: b\r\n", b" c\r\n\r\n", (0, False, FOLDED)),
        (b"", b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", (0, False, FOLDED)),
        # What follows the head is the body's business, not the head's.
        (b"", HEAD + b"\n \t\n", (len(HEAD), True, None)),
        (b"", b"\r\n\r\n", (4, True, None)),
    ],
)
def test_scan_head(seen: bytes, data: bytes, expected: tuple[int, bool, str | None]) -> None:
    assert scan_head(seen, data) == expected


@pytest.mark.parametrize(
    ("headers", "version", "expected"),
    [
        (b"Host: x\r\nContent-Length: 3\r\n", b"1.1", None),
        (b"Host: x\r\nTransfer-Encoding: chunked\r\n", b"1.1", None),
        (b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"1.1", BOTH),
        (b"transfer-encoding: chunked\r\ncontent-LENGTH: 3\r\n", b"1.1", BOTH),
        (b"Content-Length: 3\r\nContent-Length: 3\r\n", b"1.1", MANY_LENGTHS),
        (b"Content-Length: 3, 3\r\n", b"1.1", MANY_LENGTHS),
        (b"Transfer-Encoding: chunked\r\n", b"1.0", TE_IN_1_0),
        (b"X-Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"1.1", None),
    ],
)
def test_head_fault(headers: bytes, version: bytes, expected: str | None) -> None:
    head = b"POST / HTTP/" + version + b"\r\n" + headers + b"\r\n"
    assert head_fault(head, version) == expected


def test_the_reason_phrases_are_http_s() -> None:
    from http import HTTPStatus

    from espm.api.server import REASONS

    assert {code: HTTPStatus(code).phrase.encode() for code in REASONS} == REASONS
