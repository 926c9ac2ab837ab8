"""Request framing checks that h11 leaves out: where a head ends, and heads whose end is ambiguous.

h11 is lenient where RFC 9112 allows it and a proxy in front of espm may not be: it accepts a
bare LF as a line end, joins obsolete line folding, merges equal Content-Length headers and
lets Transfer-Encoding win over Content-Length. Each of these is a way to make two parsers see
two different requests in the same bytes (request smuggling), so the server checks the raw head
here, before h11 sees a byte of it, and refuses the request (400, then closes) on any of them.
"""

from __future__ import annotations

CR, LF, SP, HTAB = 0x0D, 0x0A, 0x20, 0x09

BARE_LF = "a line of the request head ends with a bare LF, not CRLF (RFC 9112 §2.2)"
FOLDED = "obsolete line folding in the request head (RFC 9112 §5.2)"
BOTH = "the request has both Content-Length and Transfer-Encoding (RFC 9112 §6.1)"
MANY_LENGTHS = "the request has more than one Content-Length"
TE_IN_1_0 = "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)"


def scan_head(seen: bytes | bytearray, data: bytes | bytearray) -> tuple[int, bool, str | None]:
    """Scan `data`, the next bytes of a request head that began with `seen`.

    Returns how many bytes of `data` belong to the head, whether they complete it (a blank
    line), and a fault (a bare LF, a folded line) that refuses the whole request.
    """
    prev = bytes(seen[-3:])
    window = prev + bytes(data)
    start = len(prev)
    if prev.endswith(b"\n") and start < len(window) and window[start] in (SP, HTAB):
        return 0, False, FOLDED
    pos = start
    while (i := window.find(b"\n", pos)) >= 0:
        if i == 0 or window[i - 1] != CR:
            return 0, False, BARE_LF
        if i >= 3 and window[i - 3 : i + 1] == b"\r\n\r\n":
            return i + 1 - start, True, None
        if i + 1 < len(window) and window[i + 1] in (SP, HTAB):
            return 0, False, FOLDED
        pos = i + 1
    return len(window) - start, False, None


def head_fault(head: bytes | bytearray, http_version: bytes) -> str | None:
    """A framing ambiguity in a complete, h11-parsed head; None when its body's end is certain."""
    lengths = 0
    encodings = 0
    for line in bytes(head).split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.lower()
        if name == b"content-length":
            lengths += 1 + value.count(b",")
        elif name == b"transfer-encoding":
            encodings += 1
    if lengths and encodings:
        return BOTH
    if lengths > 1:
        return MANY_LENGTHS
    if encodings and http_version == b"1.0":
        return TE_IN_1_0
    return None
