"""`espm status|start|stop|restart|kill|keystore`: a small ctl client for a running manager."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import ssl
import sys
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

from espm import config
from espm.suggest import SuggestingParser

EXIT_ERROR_ANSWER = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_PATHS = {
    "status": ("GET", "/{name}/status"),
    "start": ("POST", "/{name}/start"),
    "stop": ("POST", "/{name}/stop"),
    "kill": ("POST", "/{name}/kill"),
    "keystore": ("GET", "/keystore/status"),
}
_DESCRIPTIONS = {"restart": "POST /{name}/stop, wait until the process is down, POST /{name}/start."}
# States in which no process runs (supervisor.state.IDLE, which the client may not import): a
# restart may start it again.
_DOWN = ("stopped", "killed", "failed", "notInitialized", "startFailed")


class ClientError(Exception):
    """Why a request did not get an HTTP answer, said for a person; carries the exit status."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


def _defaults() -> dict[str, str]:
    """PM_* from the environment, else the manager's own defaults (the configuration table)."""
    return {v.name: os.environ.get(v.name, v.default) for v in config.VARIABLES}


def _parser(command: str) -> argparse.ArgumentParser:
    env = _defaults()
    method, path = _PATHS.get(command, ("", ""))
    parser = SuggestingParser(
        prog=f"espm {command}",
        description=_DESCRIPTIONS.get(command, f"{method} {path} on a running manager."),
        epilog="exit status: 0 on success, 1 when the manager answers an error, "
        "2 on a usage error, 3 when it cannot be reached.",
    )
    parser.add_argument(
        "--url", help="base URL of the manager (default: from PM_HTTP_HOST, PM_HTTP_PORT and PM_TLS)"
    )
    parser.add_argument("--pm-http-host", default=env["PM_HTTP_HOST"])
    parser.add_argument("--pm-http-port", default=env["PM_HTTP_PORT"])
    parser.add_argument("--pm-tls", default=env["PM_TLS"])
    parser.add_argument("--pm-proc-name", default=env["PM_PROC_NAME"])
    parser.add_argument("--cacert", help="CA file to verify the manager's certificate")
    parser.add_argument("--cert", help="client certificate (mutual TLS)")
    parser.add_argument("--key", help="client key (mutual TLS)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)"
    )
    if command == "restart":
        parser.add_argument(
            "--wait",
            type=float,
            default=120.0,
            help="seconds to wait for the process to go down before giving up (default 120)",
        )
    parser.add_argument("--json", action="store_true", help="print the JSON answer as it came")
    return parser


def _tls_on(args: argparse.Namespace) -> bool:
    return bool(args.pm_tls.strip().lower() in config.TRUE_WORDS)


def _base_url(args: argparse.Namespace) -> str:
    """The manager's URL; a --url without a scheme or a port gets them from PM_TLS and PM_HTTP_PORT."""
    url = _url(args)
    try:
        if urlsplit(url).port:
            return url
    except ValueError:
        pass
    raise ClientError(f"{url}: the port is not a number 1-65535 (--url, --pm-http-port)", EXIT_USAGE)


def _url(args: argparse.Namespace) -> str:
    scheme = "https" if _tls_on(args) else "http"
    if args.url:
        url = str(args.url).strip().rstrip("/")
        if "://" not in url:
            # `127.0.0.1:8080` would otherwise parse as a path (sent to port 80), and
            # `localhost:8080` as the scheme `localhost`.
            url = f"{scheme}://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ClientError(
                f"--url {args.url!r}: expected http://HOST:PORT or https://HOST:PORT", EXIT_USAGE
            )
        if not parts.hostname:
            raise ClientError(f"--url {args.url!r}: expected a host name or address", EXIT_USAGE)
        if not re.search(r":[^\]:]*$", parts.netloc):
            # The manager's port, not the scheme's 80/443: espm never listens there by default.
            url = parts._replace(netloc=f"{parts.netloc}:{args.pm_http_port}").geturl()
        return url
    host = args.pm_http_host.strip()
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{args.pm_http_port}"


def _context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=args.cacert)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif args.cacert:
        # A pod's certificate rarely names 127.0.0.1; the chain is what is checked.
        context.check_hostname = False
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
    return context


def _human(command: str, doc: dict[str, Any]) -> str | None:
    """The answer for a person, or None when it is no status (an error alone is said on stderr)."""
    if "state" not in doc:
        return None
    if command == "keystore":
        lines = [f"keystore  {doc.get('state')}  {doc.get('reason', '')}"]
        lines.append(f"  settings: {', '.join(doc.get('settings') or []) or '(none)'}")
        if doc.get("invalid_settings"):
            lines.append(f"  invalid: {', '.join(doc['invalid_settings'])}")
        lines.append(f"  updates: {doc.get('updates')}  reloads: {doc.get('reloads')}  at: {doc.get('at')}")
        return "\n".join(lines)
    pid = doc.get("pid")
    line = f"{doc.get('name')}  {doc.get('state')}  since {doc.get('since')}"
    line += f"  pid {pid}" if pid is not None else ""
    if doc.get("exit_code") is not None:
        line += f"  exit {doc['exit_code']}"
        if doc.get("exit_signal") is not None:
            line += f" (signal {doc['exit_signal']})"
    line += f"  starts {doc.get('starts')}"
    return line


def _tls_advice(err: ssl.SSLError, base: str) -> str:
    """What to do about a failed TLS handshake, from what the other side did."""
    reason = getattr(err, "reason", None) or ""
    if isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"the manager at {base} answered, but its certificate was not accepted "
            f"({err.verify_message}): pass --cacert with the CA that signed it, "
            "or --insecure to skip the check"
        )
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return (
            f"the server at {base} answered, but not with TLS: it serves plain HTTP "
            "(use an http:// URL, or --pm-tls=false)"
        )
    if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason or "UNKNOWN_CA" in reason:
        return (
            f"the manager at {base} answered, but refused the TLS handshake ({reason}): "
            "it asks for a client certificate (mutual TLS): pass --cert and --key"
        )
    return (
        f"the TLS handshake with {base} failed ({reason or err}): check --cacert, --cert, --key or --insecure"
    )


def _request(args: argparse.Namespace, base: str, method: str, path: str) -> tuple[int, bytes]:
    """One request to the manager: its status and body, or a ClientError saying why not."""
    parts: SplitResult = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 0
    full_path = parts.path + path.format(name=args.pm_proc_name)
    if parts.scheme == "https":
        try:
            context = _context(args)
        except (OSError, ssl.SSLError) as err:
            raise ClientError(
                f"cannot load the TLS files given (--cacert, --cert, --key): {err}", EXIT_USAGE
            ) from None
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=args.timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    try:
        try:
            conn.connect()
        except ssl.SSLError as err:
            raise ClientError(_tls_advice(err, base)) from None
        except OSError as err:
            raise ClientError(f"cannot reach the manager at {base}: {err.strerror or err}") from None
        try:
            conn.request(method, full_path, body=b"" if method == "POST" else None)
            answer = conn.getresponse()
            return answer.status, answer.read()
        except ssl.SSLError as err:
            # TLS 1.3 reports a refused client certificate on the first read, not in connect().
            raise ClientError(_tls_advice(err, base)) from None
        except TimeoutError:
            raise ClientError(
                f"the manager at {base} accepted the connection but did not answer within {args.timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as err:
            if parts.scheme == "http":
                hint = ": if it serves HTTPS (PM_TLS=true), use an https:// URL or --pm-tls=true"
            else:
                # asyncio drops a refused client certificate's alert: the close is all we see.
                hint = (
                    ": if it asks for client certificates (PM_CLIENT_CA_PATH, mutual TLS), "
                    "pass --cert and --key signed by that CA"
                )
            raise ClientError(
                f"the server at {base} accepted the connection but sent no HTTP answer ({err!r}){hint}"
            ) from None
    finally:
        conn.close()


def _show(command: str, args: argparse.Namespace, status: int, body: bytes) -> int:
    """Print an answer (a status on stdout, an error on stderr); return the exit status."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    shown = _human(command, doc) if isinstance(doc, dict) and not args.json else None
    if args.json or not isinstance(doc, dict):
        print(body.decode("utf-8", "replace"))
    elif shown is not None:
        print(shown)
    if not 200 <= status < 300:
        reason = doc.get("error") if isinstance(doc, dict) else None
        print(f"espm {command}: HTTP {status}{': ' + reason if reason else ''}", file=sys.stderr)
        return EXIT_ERROR_ANSWER
    return 0


def _restart(args: argparse.Namespace, base: str) -> int:
    """Stop, wait until no process runs, start: what an operator would do by hand."""
    status, body = _request(args, base, "POST", "/{name}/stop")
    if not 200 <= status < 300:
        return _show("stop", args, status, body)
    deadline = time.monotonic() + args.wait
    while True:
        status, body = _request(args, base, "GET", "/{name}/status")
        if status != 200:
            return _show("status", args, status, body)
        state = json.loads(body).get("state")
        if state in _DOWN:
            break
        if time.monotonic() >= deadline:
            print(
                f"espm restart: the process is still {state} after {args.wait:g} s; it was not started "
                "again (wait longer with --wait, or end it with espm kill, then espm start)",
                file=sys.stderr,
            )
            return EXIT_ERROR_ANSWER
        time.sleep(0.2)
    status, body = _request(args, base, "POST", "/{name}/start")
    return _show("start", args, status, body)


def main(command: str, argv: list[str]) -> int:
    try:
        args = _parser(command).parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        base = _base_url(args)
        if command == "restart":
            return _restart(args, base)
        method, path = _PATHS[command]
        status, body = _request(args, base, method, path)
    except ClientError as err:
        print(f"espm {command}: {err}", file=sys.stderr)
        return err.code
    return _show(command, args, status, body)
