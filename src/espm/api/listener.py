"""The API's listening socket, opened before anything starts so a bad address is a config error."""

from __future__ import annotations

import socket

BACKLOG = 512


def open_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port ("::" also takes IPv4); OSError when it cannot be had."""
    # An ASCII host goes as bytes: a str is encoded with the "idna" codec, whose import (with
    # unicodedata and stringprep) costs half a MiB for nothing.
    name: str | bytes | None = None if host in ("", "*") else host.encode() if host.isascii() else host
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # One socket for both: a pod's clients may come over IPv4 or IPv6.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
