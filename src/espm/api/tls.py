"""Server TLS: the context, mutual TLS, and certificate rotation without a restart.

Kubernetes rotates a mounted certificate by swapping files. The listening socket keeps one
context whose SNI callback (OpenSSL calls it for every ClientHello, with or without SNI) hands
each new handshake the newest context that loaded cleanly; a half-rotated pair (new certificate,
old key) fails to load and the previous context stays in service.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger("espm.tls")


class TlsError(Exception):
    """The certificate, key or client CA cannot be used."""


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with `client_ca`, clients must present a certificate it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise TlsError(f"certificate and key do not load together ({err.reason or err})") from None
    except OSError as err:
        raise TlsError(f"cannot read the certificate or key ({err.strerror})") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as err:
            raise TlsError(f"cannot load the client CA ({err})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _stamp(*paths: Path | None) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        if path is None:
            continue
        try:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((0, 0, 0))
    return tuple(stamps)


class CertificateWatcher:
    """Holds the listening context and swaps in a fresh one when the files change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._paths = (cert, key, client_ca)
        self._current = server_context(cert, key, client_ca)
        self._stamp = _stamp(*self._paths)
        self._refused: tuple[tuple[int, int, int], ...] = ()
        self.reloads = 0
        # The context the server listens with; every handshake is redirected to _current.
        self.context = server_context(cert, key, client_ca)
        self.context.sni_callback = self._select

    def _select(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        sock.context = self._current

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; keep the old context if they do not load."""
        stamp = _stamp(*self._paths)
        if stamp == self._stamp or stamp == self._refused:
            return False
        try:
            fresh = server_context(*self._paths)
        except TlsError as err:
            # Often a rotation seen half-way (the certificate before the key): the next change
            # of the files is tried again; this one is said once.
            self._refused = stamp
            log.warning("new TLS files not loaded, keeping the previous ones: %s", err)
            return False
        self._current = fresh
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"file.path": str(self._paths[0])})
        return True
