"""`espm demo`: espm on a built-in demo, with the stand-in Elasticsearch and keystore tool.

It lays out a pod's files in a temporary folder (a Secret mounted the Kubernetes way, a config
folder, an `elasticsearch-keystore`), runs `espm run` on them with the updater and reloads on,
then walks through what an operator sees: readiness, a secret rotation reaching the keystore and
Elasticsearch, a stop and a start over the API, and SIGTERM ending it all.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from espm.standins.secret import SecretVolume


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificates(folder: Path) -> tuple[Path, Path, Path] | None:
    """A CA and a server certificate for the stand-in Elasticsearch, if openssl is there."""
    if shutil.which("openssl") is None:
        return None
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.crt", "es.key", "es.csr", "es.crt"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=demo-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=es-demo", "-keyout", str(key), "-out", str(csr)
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        str(cert),
    )
    return ca, cert, key


class Tour:
    """Talks to the demo's manager and prints what it does."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read() or b"null")
        finally:
            conn.close()

    def until(self, what: str, method: str, path: str, check: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, doc = self.call(method, path)
                if check(status, doc):
                    return doc
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: timed out waiting for {what}")
            time.sleep(0.1)

    @staticmethod
    def say(step: str, doc: Any = None) -> None:
        print(f"\n\033[1m== {step}\033[0m" if sys.stdout.isatty() else f"\n== {step}", flush=True)
        if doc is not None:
            print(json.dumps(doc, indent=2), flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def rotation_hint(secrets: Path) -> str:
    """How to change a secret in the demo's folder the way the kubelet does, for a shell."""
    return f"""To change a secret the way Kubernetes does (a new folder, then ..data swapped in one rename):
  cd {secrets}
  new=..$(date +%s%N); mkdir "$new" && cp ..data/* "$new"/
  printf %s AKIA-DEMO-3 > "$new"/s3.client.default.access_key
  ln -s "$new" ..data_tmp && mv -T ..data_tmp ..data
espm does not watch edits of the files in place (the kubelet never makes any): in a cluster,
change the Secret (kubectl apply, kubectl edit secret) and the kubelet swaps ..data like this."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="espm demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep running after the tour (Ctrl-C ends)")
    parser.add_argument("--port", type=int, default=0, help="port of espm's API (default: a free one)")
    parser.add_argument(
        "--tool-delay", default="0.7", help="seconds each keystore tool run takes (a JVM start)"
    )
    args = parser.parse_args(argv)
    # SIGTERM and SIGHUP end the demo as Ctrl-C does: espm stopped and the folder (which holds a
    # CA key) removed. By default they would kill the demo alone and leave both behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="espm-demo-"))
    running: list[subprocess.Popen[bytes]] = []
    try:
        return _tour(args, root, running)
    except KeyboardInterrupt:
        if not running or running[0].poll() is not None:
            return 130
        running[0].send_signal(signal.SIGTERM)
        return running[0].wait(30)
    finally:
        # Cleaning up: a second signal must not cut it short.
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        for manager in running:
            if manager.poll() is None:
                manager.kill()
                manager.wait()
        shutil.rmtree(root, ignore_errors=True)


def _tour(args: argparse.Namespace, root: Path, running: list[subprocess.Popen[bytes]]) -> int:
    """Lay out the pod's files in `root`, start espm on them (into `running`) and walk through it."""
    secrets, config, bin_dir, certs = (root / n for n in ("secrets", "config", "bin", "certs"))
    for folder in (secrets, config, bin_dir, certs):
        folder.mkdir()
    secret = SecretVolume(secrets)
    secret.write(
        {"s3.client.default.access_key": "AKIA-DEMO-1", "s3.client.default.secret_key": "demo-secret-1"}
    )
    (config / "elasticsearch.yml").write_text("cluster.name: espm-demo\n")
    tool = bin_dir / "elasticsearch-keystore"
    tool.write_text(f'#!/bin/sh\nexec {sys.executable} -m espm.standins.keystore_tool "$@"\n')
    tool.chmod(0o755)
    password = root / "es-password"
    password.write_text("demo-password\n")
    es_port = _free_port()
    api_port = args.port or _free_port()
    tls = _certificates(certs)
    es_command = [
        sys.executable,
        "-m",
        "espm.standins.elasticsearch",
        "--port",
        str(es_port),
        "--user",
        "elastic",
        "--password",
        "demo-password",
        "--keystore",
        str(config / "elasticsearch.keystore"),
    ]
    if tls:
        es_command += ["--cert", str(tls[1]), "--key", str(tls[2])]
    # The demo's own settings, whatever the caller's environment says.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PM_", "KEYSTORE_", "STANDIN_"))}
    env.update(
        PM_KEYSTORE_UPDATER="true",
        PM_LOG_LEVEL="info",
        PM_PROC_CMD=" ".join(es_command),
        PM_HTTP_HOST="127.0.0.1",
        PM_HTTP_PORT=str(api_port),
        PM_LOG_FORMAT="text",
        PM_EXP_VARS="true",
        PM_METRICS="true",
        PM_CONFIG_FILE=str(config / "elasticsearch.yml"),
        PM_SUCCESS_EXIT_CODES="143",
        KEYSTORE_SOURCE_DIR=str(secrets),
        KEYSTORE_BINARY=str(tool),
        KEYSTORE_PATH=str(config / "elasticsearch.keystore"),
        KEYSTORE_RELOAD_CREDENTIALS="true",
        KEYSTORE_ES_USERNAME="elastic",
        KEYSTORE_ES_PASSWORD_FILE=str(password),
        KEYSTORE_ES_ENDPOINT=f"{'https' if tls else 'http'}://127.0.0.1:{es_port}",
        KEYSTORE_ES_CA_CERTS_PATH=str(tls[0] if tls else certs),
        STANDIN_KEYSTORE_DELAY=args.tool_delay,
    )
    print(f"demo folder: {root}\nespm API: http://127.0.0.1:{api_port}  (logs below are espm's, on stderr)")
    manager = subprocess.Popen([sys.executable, "-m", "espm", "run"], env=env)
    running.append(manager)
    tour = Tour(api_port)
    tour.say("Elasticsearch (the stand-in) starts once the keystore is built; readiness:")
    tour.say("GET /es/ready", tour.until("readiness", "GET", "/es/ready", lambda s, d: s == 200))
    tour.say("GET /es/status", tour.call("GET", "/es/status")[1])
    tour.say(
        "GET /keystore/status",
        tour.until("the first reload", "GET", "/keystore/status", lambda s, d: d["reloads"] >= 1),
    )
    tour.say("Rotating the Secret the way Kubernetes does (..data swapped), one secret removed")
    started = time.monotonic()
    secret.write({"s3.client.default.access_key": "AKIA-DEMO-2"})
    doc = tour.until("the reload", "GET", "/keystore/status", lambda s, d: d["reloads"] >= 2)
    tour.say(f"keystore updated and secure settings reloaded in {time.monotonic() - started:.2f}s", doc)
    tour.say("POST /es/stop", tour.call("POST", "/es/stop")[1])
    tour.say("stopped", tour.until("stopped", "GET", "/es/status", lambda s, d: d["state"] == "stopped"))
    tour.say("POST /es/start", tour.call("POST", "/es/start")[1])
    tour.until("readiness", "GET", "/es/ready", lambda s, d: s == 200)
    if args.keep:
        tour.say(f"Running. Try: espm status --url http://127.0.0.1:{api_port}; Ctrl-C to end")
        print(rotation_hint(secrets), flush=True)
        manager.wait()
    tour.say("SIGTERM to espm: forwarded to Elasticsearch, whose status espm exits with")
    manager.send_signal(signal.SIGTERM)
    code = manager.wait(30)
    print(f"espm exited with {code}", flush=True)
    return code
