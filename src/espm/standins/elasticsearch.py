"""Stand-in Elasticsearch: `GET /` and the reload secure settings API over HTTP(S), with failure modes."""

from __future__ import annotations

import argparse
import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote

from espm.keystore import format as ksf
from espm.system.timestamps import rfc3339

from .keystore_tool import CORRUPTED, WRONG_PASSWORD, ToolVersion, format_refusal

Json = dict[str, Any]

MODES = frozenset(
    {
        "ok",
        "unavailable",
        "reload-500",
        "reload-exception",
        "node-failed",
        "wrong-digest",
        "forbidden",
        "forbidden-all",
        "slow",
    }
)
SLOW_SECONDS = 5.0
MAX_BODY = 1024 * 1024
# A client that stalls mid-request (or mid-handshake) must not pin a thread forever.
CONNECTION_TIMEOUT = 10.0
COMMON_PARAMS = frozenset({"pretty", "human", "error_trace", "filter_path"})
RELOAD_PARAMS = COMMON_PARAMS | {"timeout"}
TIME_VALUE = re.compile(r"-1|0|\d+(?:\.\d+)?(?:nanos|micros|ms|s|m|h|d)")
JSON_MEDIA_TYPES = ("application/json", "application/vnd.elasticsearch+json")
TAGLINE = "You Know, for Search"
UNAUTHORIZED_ROLES = "[viewer]"


def es_error(status: int, error_type: str, reason: str | None, **extra: Any) -> Json:
    """Elasticsearch's error body: the cause, repeated as the root cause."""
    cause: Json = {"type": error_type, "reason": reason, **extra}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def _lucene_version(version: ToolVersion) -> str:
    return {6: "7.7.3", 7: "8.11.3", 8: "9.11.1", 9: "10.2.2"}.get(version.major, "10.2.2")


def _previous_major(version: ToolVersion) -> str:
    return {6: "5.6.0", 7: "6.8.0", 8: "7.17.0", 9: "8.19.0"}.get(version.major, "8.19.0")


def _java_split(path: str) -> list[str]:
    """PathTrie's segments: Java's split drops trailing empties, and one leading `/` is allowed."""
    parts = path.split("/")
    while parts and parts[-1] == "":
        parts.pop()
    if parts and parts[0] == "":
        parts.pop(0)
    return [unquote(part) for part in parts]


class Stats:
    """What the stand-in saw, for tests: counts per endpoint and the reload bodies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root = 0
        self._reload = 0
        self._unauthorized = 0
        self._reload_bodies: list[Any] = []
        self._reload_paths: list[str] = []

    def count_root(self) -> None:
        with self._lock:
            self._root += 1

    def count_unauthorized(self) -> None:
        with self._lock:
            self._unauthorized += 1

    def count_reload(self, path: str, body: Any) -> None:
        with self._lock:
            self._reload += 1
            self._reload_paths.append(path)
            self._reload_bodies.append(body)

    def snapshot(self) -> Json:
        with self._lock:
            return {
                "root": self._root,
                "reload": self._reload,
                "reload_bodies": list(self._reload_bodies),
                "reload_paths": list(self._reload_paths),
                "unauthorized": self._unauthorized,
            }


@dataclass
class NodeState:
    """The one node this stand-in pretends to be, and how it answers."""

    version: ToolVersion
    version_text: str
    user: str | None
    password: str
    keystore: Path | None
    mode_file: Path | None
    verbose: bool
    node_name: str
    cluster_name: str
    node_id: str = field(default_factory=lambda: secrets.token_urlsafe(16)[:22])
    cluster_uuid: str = field(default_factory=lambda: secrets.token_urlsafe(16)[:22])
    stats: Stats = field(default_factory=Stats)

    @property
    def sends_product_header(self) -> bool:
        return self.version.at_least(7, 14)

    @property
    def keystore_format(self) -> int:
        """The newest keystore format this node reads: the one its version writes."""
        try:
            return ksf.format_for_es_version(self.version_text)
        except ValueError:
            return 2  # before 6.3: PKCS#12 inside, so every AES-GCM keystore is too new for it

    @property
    def reports_digest(self) -> bool:
        return self.version.at_least(9, 3)

    def read_mode(self) -> tuple[str, float]:
        """The failure mode, re-read on every request; `slow` may carry its seconds (`slow 0.5`)."""
        if self.mode_file is None:
            return "ok", 0.0
        try:
            text = self.mode_file.read_text().strip()
        except FileNotFoundError:
            return "ok", 0.0
        word, _, argument = text.partition(" ")
        word = word or "ok"
        if word == "slow":
            return word, float(argument) if argument.strip() else SLOW_SECONDS
        return word, 0.0

    def info(self) -> Json:
        return {
            "name": self.node_name,
            "cluster_name": self.cluster_name,
            "cluster_uuid": self.cluster_uuid,
            "version": {
                "number": self.version_text,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": "0" * 40,
                "build_date": "2024-08-05T10:05:34.233336849Z",
                "build_snapshot": False,
                "lucene_version": _lucene_version(self.version),
                "minimum_wire_compatibility_version": _previous_major(self.version),
                "minimum_index_compatibility_version": f"{self.version.major - 1}.0.0",
            },
            "tagline": TAGLINE,
        }

    def matches(self, node_ids: str | None) -> bool:
        if node_ids is None:
            return True
        own = (self.node_id, self.node_name)
        for wanted in node_ids.split(","):
            if wanted in ("_all", "_local", "_master", "*"):
                return True
            if any(fnmatch.fnmatchcase(name, wanted) for name in own):
                return True
        return False

    def node_reload(self, mode: str, password: str) -> Json:
        """One node's reload answer: its failure is a reload_exception, not an HTTP error."""
        node: Json = {"name": self.node_name}
        data: bytes | None = None
        exception: Json | None = None
        mtime = 0.0
        try:
            if self.keystore is None:
                raise FileNotFoundError
            data = self.keystore.read_bytes()
            mtime = self.keystore.stat().st_mtime
            # The node decrypts the file itself, with the password the request carries.
            keystore = ksf.decode(data, password)
            if keystore.version > self.keystore_format:
                raise ksf.FormatTooNewError(f"format {keystore.version}", keystore.version)
            names = sorted(keystore.entries)
        except FileNotFoundError:
            exception = {"type": "illegal_state_exception", "reason": "Keystore is missing"}
        except ksf.WrongPasswordError:
            exception = {"type": "security_exception", "reason": WRONG_PASSWORD}
        except ksf.FormatVersionError as error:
            assert self.keystore is not None
            refusal = format_refusal(self.keystore, error)
            exception = {"type": "illegal_state_exception", "reason": refusal.message}
        except ksf.KeystoreFormatError:
            exception = {"type": "security_exception", "reason": CORRUPTED}
        if exception is None and mode == "reload-exception":
            exception = {
                "type": "security_exception",
                "reason": "stand-in mode [reload-exception]: secure settings could not be reloaded",
            }
        if exception is not None:
            node["reload_exception"] = exception
            return node
        assert data is not None and self.keystore is not None
        if self.reports_digest:
            digested = data + b"stale" if mode == "wrong-digest" else data
            node["secure_setting_names"] = names
            node["keystore_path"] = str(self.keystore)
            node["keystore_digest"] = hashlib.sha256(digested).hexdigest()
            node["keystore_last_modified_time"] = rfc3339(mtime)
        return node


class StandinServer(ThreadingHTTPServer):
    """One thread per connection; TLS is negotiated in that thread, not in the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: NodeState, tls: ssl.SSLContext | None) -> None:
        self.state = state
        self.tls = tls
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        if self.tls is not None:
            connection = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up or fail the handshake are routine; a bug in a handler is not.
        if self.state.verbose or not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class BadRequestError(Exception):
    def __init__(self, status: int, body: Json) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class RequestHandler(BaseHTTPRequestHandler):
    server: StandinServer
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(CONNECTION_TIMEOUT)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.state.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- plumbing -------------------------------------------------------------------------

    @property
    def state(self) -> NodeState:
        return self.server.state

    @property
    def target(self) -> str:
        """The request target as sent: http.server folds a leading `//`, Elasticsearch does not."""
        words = self.requestline.split()
        return words[1] if len(words) == 3 else self.path

    def _send(
        self,
        status: int,
        body: Any,
        *,
        headers: Sequence[tuple[str, str]] = (),
        product: bool = True,
    ) -> None:
        pretty = "pretty" in dict(parse_qsl(self.target.partition("?")[2], keep_blank_values=True))
        text = json.dumps(body, indent=2 if pretty else None) + ("\n" if pretty else "")
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        # Security rejects 401 and 403 before the header is added; clients rely on that.
        if product and status not in (401, 403) and self.state.sends_product_header:
            self.send_header("X-Elastic-Product", "Elasticsearch")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise BadRequestError(413, es_error(413, "http_content_too_long", "too long"))
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or "0")
        if length > MAX_BODY:
            raise BadRequestError(413, es_error(413, "http_content_too_long", "too long"))
        return self.rfile.read(length) if length > 0 else b""

    def _authenticate(self) -> str | None:
        """The user name, or None once a 401 has been sent."""
        state = self.state
        if state.user is None:
            return "_anonymous"
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        user: str | None = None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = None
            if decoded is not None and ":" in decoded:
                user, _, password = decoded.partition(":")
                if hmac.compare_digest(user.encode(), state.user.encode()) and hmac.compare_digest(
                    password.encode(), state.password.encode()
                ):
                    return user
        if user is None:
            reason = f"missing authentication credentials for REST request [{self.target}]"
        else:
            reason = f"unable to authenticate user [{user}] for REST request [{self.target}]"
        challenges = ['Basic realm="security" charset="UTF-8"']
        if state.version.major >= 8:
            challenges += ['Bearer realm="security"', "ApiKey"]
        state.stats.count_unauthorized()
        body = es_error(401, "security_exception", reason, header={"WWW-Authenticate": challenges})
        self._send(401, body, headers=[("WWW-Authenticate", value) for value in challenges])
        return None

    def _forbidden(self, action: str, user: str, privileges: str) -> None:
        reason = (
            f"action [{action}] is unauthorized for user [{user}] with effective roles "
            f"{UNAUTHORIZED_ROLES}, this action is granted by the cluster privileges [{privileges}]"
        )
        self._send(403, es_error(403, "security_exception", reason))

    def _check_params(self, allowed: frozenset[str], params: dict[str, str], path: str) -> None:
        unknown = sorted(set(params) - allowed)
        if unknown:
            joined = ", ".join(unknown)
            noun = "parameter" if len(unknown) == 1 else "parameters"
            reason = f"request [{path}] contains unrecognized {noun}: [{joined}]"
            raise BadRequestError(400, es_error(400, "illegal_argument_exception", reason))

    # --- routing --------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        path, _, query = self.target.partition("?")
        try:
            body = self._read_body()
        except (ValueError, BadRequestError) as error:
            self.close_connection = True
            if isinstance(error, BadRequestError):
                self._send(error.status, error.body)
            else:
                self._send(400, es_error(400, "illegal_argument_exception", "bad body framing"))
            return
        if path == "/_standin/stats" and method == "GET":
            self._send(200, self.state.stats.snapshot(), product=False)
            return
        segments = _java_split(path)
        node_ids: str | None = None
        allowed: tuple[str, ...]
        if segments == []:
            endpoint, allowed = "root", ("GET", "HEAD")
        elif segments == ["_nodes", "reload_secure_settings"]:
            endpoint, allowed = "reload", ("POST",)
        elif (
            len(segments) == 3
            and segments[0] == "_nodes"
            and segments[2] == "reload_secure_settings"
            and segments[1]
        ):
            endpoint, allowed, node_ids = "reload", ("POST",), segments[1]
        elif len(segments) == 1 and not segments[0].startswith("_") and method in ("GET", "HEAD"):
            endpoint, allowed = "index", ("GET", "HEAD")
        else:
            message = f"no handler found for uri [{self.target}] and method [{method}]"
            self._send(400, {"error": message, "status": 400})
            return
        if method not in allowed:
            message = (
                f"Incorrect HTTP method for uri [{self.target}] and method [{method}], "
                f"allowed: [{', '.join(allowed)}]"
            )
            self._send(405, {"error": message, "status": 405})
            return
        user = self._authenticate()
        if user is None:
            return
        try:
            mode, slow_seconds = self.state.read_mode()
        except ValueError as error:
            self._send(500, es_error(500, "exception", f"bad stand-in mode file: {error}"))
            return
        if mode not in MODES:
            self._send(500, es_error(500, "exception", f"unknown stand-in mode [{mode}]"))
            return
        if mode == "slow":
            time.sleep(slow_seconds)
        params = dict(parse_qsl(query, keep_blank_values=True))
        try:
            if endpoint == "root":
                self._root(mode, user, params, path)
            elif endpoint == "reload":
                self._reload(mode, user, params, path, node_ids, body)
            else:
                index = segments[0]
                reason = f"no such index [{index}]"
                self._send(
                    404,
                    es_error(
                        404,
                        "index_not_found_exception",
                        reason,
                        **{"resource.type": "index_or_alias", "resource.id": index},
                        index_uuid="_na_",
                        index=index,
                    ),
                )
        except BadRequestError as error:
            self._send(error.status, error.body)

    # --- endpoints ------------------------------------------------------------------------

    def _root(self, mode: str, user: str, params: dict[str, str], path: str) -> None:
        self._check_params(COMMON_PARAMS, params, path)
        self.state.stats.count_root()
        if mode == "forbidden-all":
            self._forbidden("cluster:monitor/main", user, "monitor,manage,all")
            return
        # 6.x answers 503 with its usual body while no master is elected.
        self._send(503 if mode == "unavailable" else 200, self.state.info())

    def _parse_reload_body(self, body: bytes) -> Json | None:
        if not body:
            return None
        content_type = self.headers.get("Content-Type", "")
        media_type = content_type.split(";")[0].strip().lower()
        if media_type not in JSON_MEDIA_TYPES:
            message = f"Content-Type header [{content_type}] is not supported"
            raise BadRequestError(406, {"error": message, "status": 406})
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as error:
            raise BadRequestError(
                400, es_error(400, "x_content_parse_exception", f"[1:1] {error}")
            ) from error
        if not isinstance(document, dict):
            raise BadRequestError(400, es_error(400, "x_content_parse_exception", "[1:1] expected an object"))
        for key, value in document.items():
            if key != "secure_settings_password":
                reason = f"[1:2] [reload_secure_settings] unknown field [{key}]"
                raise BadRequestError(400, es_error(400, "x_content_parse_exception", reason))
            if not isinstance(value, str):
                reason = "[1:29] [reload_secure_settings] failed to parse field [secure_settings_password]"
                raise BadRequestError(400, es_error(400, "x_content_parse_exception", reason))
        return document

    def _reload(
        self,
        mode: str,
        user: str,
        params: dict[str, str],
        path: str,
        node_ids: str | None,
        body: bytes,
    ) -> None:
        self._check_params(RELOAD_PARAMS, params, path)
        timeout = params.get("timeout")
        if timeout is not None and TIME_VALUE.fullmatch(timeout) is None:
            reason = (
                f"failed to parse setting [timeout] with value [{timeout}] as a time value: "
                "unit is missing or unrecognized"
            )
            raise BadRequestError(400, es_error(400, "illegal_argument_exception", reason))
        document = self._parse_reload_body(body)
        state = self.state
        state.stats.count_reload(self.target, document)
        if mode in ("forbidden", "forbidden-all"):
            self._forbidden("cluster:admin/nodes/reload_secure_settings", user, "manage,all")
            return
        if mode == "unavailable":
            self._send(503, es_error(503, "master_not_discovered_exception", None))
            return
        if mode == "reload-500":
            self._send(500, es_error(500, "exception", "stand-in mode [reload-500]"))
            return
        answer: Json = {"cluster_name": state.cluster_name}
        if not state.matches(node_ids):
            answer["_nodes"] = {"total": 0, "successful": 0, "failed": 0}
            answer["nodes"] = {}
        elif mode == "node-failed":
            failure = {
                "type": "failed_node_exception",
                "reason": f"Failed node [{state.node_id}]",
                "node_id": state.node_id,
                "caused_by": {
                    "type": "node_not_connected_exception",
                    "reason": f"[{state.node_name}] stand-in mode [node-failed]",
                },
            }
            answer["_nodes"] = {"total": 1, "successful": 0, "failed": 1, "failures": [failure]}
            answer["nodes"] = {}
        else:
            password = document.get("secure_settings_password", "") if document else ""
            answer["_nodes"] = {"total": 1, "successful": 1, "failed": 0}
            answer["nodes"] = {state.node_id: state.node_reload(mode, password)}
        self._send(200, {"_nodes": answer.pop("_nodes"), **answer})


class _StopError(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _StopError


def _stop_serving(server: StandinServer) -> Callable[[int, FrameType | None], None]:
    """SIGTERM while serving: end serve_forever from another thread (it cannot end itself).

    Raising from the handler instead could land inside socketserver's request handling, whose
    `except Exception` turns it into a logged error: the SIGTERM was then lost.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    return stop


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m espm.standins.elasticsearch",
        description="A stand-in Elasticsearch answering GET / and the reload secure settings API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cert", type=Path, help="PEM certificate (chain); TLS when given")
    parser.add_argument("--key", type=Path, help="PEM private key of --cert")
    parser.add_argument("--user", help="require basic auth as this user")
    parser.add_argument("--password", default="", help="the password of --user")
    parser.add_argument("--keystore", type=Path, help="the keystore file that reloads read")
    parser.add_argument("--version", default="8.15.0", help="Elasticsearch version to imitate")
    parser.add_argument("--node-name", default="standin-node")
    parser.add_argument("--cluster-name", default="docker-cluster")
    parser.add_argument("--port-file", type=Path, help="written atomically once listening")
    parser.add_argument(
        "--mode-file",
        type=Path,
        help=f"failure mode, re-read per request: {', '.join(sorted(MODES))} (slow takes seconds)",
    )
    parser.add_argument(
        "--ready-after",
        type=float,
        default=0.0,
        help="refuse connections for this many seconds, as a booting node does",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if (options.cert is None) != (options.key is None):
        parser.error("--cert and --key go together")
    try:
        version = ToolVersion.parse(options.version)
    except ValueError as error:
        parser.error(str(error))
    tls: ssl.SSLContext | None = None
    if options.cert is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(options.cert, options.key)
    state = NodeState(
        version=version,
        version_text=options.version,
        user=options.user,
        password=options.password,
        keystore=options.keystore.absolute() if options.keystore else None,
        mode_file=options.mode_file,
        verbose=options.verbose,
        node_name=options.node_name,
        cluster_name=options.cluster_name,
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        # Not even bound yet: connections are refused, as with a node that is still booting.
        time.sleep(max(options.ready_after, 0.0))
        server = StandinServer((options.host, options.port), state, tls)
    except _StopError:
        return 0
    signal.signal(signal.SIGTERM, _stop_serving(server))
    try:
        port = server.server_address[1]
        if options.port_file is not None:
            _write_atomically(options.port_file, f"{port}\n")
        if options.verbose:
            scheme = "https" if tls else "http"
            print(f"stand-in Elasticsearch on {scheme}://{options.host}:{port}", file=sys.stderr)
        server.serve_forever(poll_interval=0.2)
    except (_StopError, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
