"""`espm status|start|stop|kill|keystore`: a small client for a running manager, like supervisorctl."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit

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


def _parser(command: str) -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog=f"espm {command}",
        description=f"{_PATHS[command][0]} {_PATHS[command][1]} on a running manager.",
        epilog="exit status: 0 on success, 1 when the manager answers an error, "
        "2 on a usage error, 3 when it cannot be reached.",
    )
    parser.add_argument(
        "--url", help="base URL of the manager (default: from PM_HTTP_HOST, PM_HTTP_PORT and PM_TLS)"
    )
    parser.add_argument("--pm-http-host", default=env.get("PM_HTTP_HOST", ""))
    parser.add_argument("--pm-http-port", default=env.get("PM_HTTP_PORT", "8080"))
    parser.add_argument("--pm-tls", default=env.get("PM_TLS", "false"))
    parser.add_argument("--pm-proc-name", default=env.get("PM_PROC_NAME", "es"))
    parser.add_argument("--cacert", help="CA file to verify the manager's certificate")
    parser.add_argument("--cert", help="client certificate (mutual TLS)")
    parser.add_argument("--key", help="client key (mutual TLS)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    parser.add_argument("--json", action="store_true", help="print the JSON answer as it came")
    return parser


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    host = args.pm_http_host.strip()
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    tls = args.pm_tls.strip().lower() in ("true", "1", "yes", "on")
    return f"{'https' if tls else 'http'}://{host}:{args.pm_http_port}"


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


def _human(command: str, doc: dict[str, Any]) -> str:
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
    if doc.get("error"):
        line += f"\nerror: {doc['error']}"
    return line


def main(command: str, argv: list[str]) -> int:
    try:
        args = _parser(command).parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    base = _base_url(args)
    parts = urlsplit(base)
    method, path = _PATHS[command]
    path = parts.path + path.format(name=args.pm_proc_name)
    try:
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname or "127.0.0.1",
                parts.port or 443,
                timeout=args.timeout,
                context=_context(args),
            )
        else:
            conn = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port or 80, timeout=args.timeout
            )
        conn.request(method, path, body=b"" if method == "POST" else None)
        answer = conn.getresponse()
        body = answer.read()
    except (OSError, ssl.SSLError, http.client.HTTPException) as err:
        print(f"espm {command}: cannot reach the manager at {base}: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    ok = 200 <= answer.status < 300
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if args.json or not isinstance(doc, dict):
        print(body.decode("utf-8", "replace"))
    else:
        print(_human(command, doc))
    if not ok:
        reason = doc.get("error") if isinstance(doc, dict) else None
        print(f"espm {command}: HTTP {answer.status}{': ' + reason if reason else ''}", file=sys.stderr)
        return EXIT_ERROR_ANSWER
    return 0
