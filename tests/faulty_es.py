"""A misbehaving "Elasticsearch" on a real socket: one fault, served to every connection, in threads.

Faults: `endless` (a 200 whose chunked body never ends), `endless-close` (a body read to the end of
the connection, never ending), `headers` (headers that never end), `reset` (a reset right after
accept, and the TLS handshake when there is one), `close` (closed before answering), `silent`
(never answers), `trickle` (a byte of the head every 0.2 s), and `json:<body>` (a 200 with that
body), `reload-json:<body>` (a sound GET /, and that body for the reload). With `tls`, the
handshake comes first, with the certificate given.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time


class FaultyEs:
    def __init__(self, fault: str, tls: ssl.SSLContext | None = None) -> None:
        self.fault = fault
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._method = b""
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        sock: socket.socket = raw
        try:
            raw.settimeout(30)
            if self.tls is not None:
                sock = self.tls.wrap_socket(raw, server_side=True)
            if self.fault == "reset":
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()
                return
            self._read_request(sock)
            self._answer(sock)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _read_request(self, sock: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        self._method = head.split(b" ", 1)[0]
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                want = int(line.split(b":")[1])
                while len(body) < want:
                    body += sock.recv(65536)

    def _answer(self, sock: socket.socket) -> None:
        fault = self.fault
        if fault == "close":
            return
        if fault == "silent":
            while not self._stop.is_set() and sock.recv(65536):
                pass
            return
        if fault == "endless":
            sock.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
            while not self._stop.is_set():
                sock.sendall(chunk)
        if fault == "endless-close":
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
            while not self._stop.is_set():
                sock.sendall(b"[" * 16384)
        if fault == "headers":
            sock.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self._stop.is_set():
                sock.sendall(b"x-more: " + b"y" * 100 + b"\r\n")
        if fault == "many-headers":
            sock.sendall(b"HTTP/1.1 200 OK\r\n" + b"x-a: b\r\n" * 500 + b"content-length: 2\r\n\r\n{}")
        if fault == "trickle":
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}":
                if self._stop.is_set():
                    return
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
        if fault.startswith("reload-json:"):
            # A sound GET /, then this body for the reload.
            fault = "json:" + (fault[12:] if self._method == b"POST" else '{"version": {"number": "8.15.0"}}')
        if fault.startswith("json:"):
            body = fault[5:].encode()
            sock.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                + body
            )
