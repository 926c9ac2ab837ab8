"""One HTTP/1.1 message to bytes through h11: its head, its body, its end (server and client alike)."""

from __future__ import annotations

import h11


def message_bytes(
    conn: h11.Connection, head: h11.Request | h11.Response, body: bytes = b"", *, with_body: bool = True
) -> bytes:
    """The bytes of a whole message; `with_body=False` for an answer to HEAD (headers only).

    Raises h11.LocalProtocolError as `conn.send` does: the caller decides what a refusal means
    (a server calls `send_failed()` and closes).
    """
    out = conn.send(head) or b""
    if body and with_body:
        out += conn.send(h11.Data(data=body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")
