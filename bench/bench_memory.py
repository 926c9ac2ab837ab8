"""memory: the idle manager's VmRSS and VmHWM, with a `sleep` child and the API on; then loaded.

Each manager runs `sleep 600`; once its child runs and its HTTP server listens (espm's API,
supervisord's XML-RPC inet_http_server), it is left idle for IDLE seconds and then
/proc/<manager>/status is read. No request is sent: the figure is the idle footprint.
tini and dumb-init have no API; they are the floor of a manager in C. "python" is the floor of
one in Python: the same interpreter (same site-packages and .pth files) that only forks the child
and waits for it.

"everything on": espm with HTTPS (PM_TLS), the keystore updater reloading a stand-in
Elasticsearch over HTTPS, PM_METRICS and PM_EXP_VARS, after REQUESTS requests over HTTPS (every
endpoint, ten per connection) and UPDATES Secret updates, each written, reloaded and seen in
/keystore/status. Its anchors are espm idle with everything off and the Python floor, measured in
the same run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import (
    PYTHON,
    SUPERVISORD,
    BenchError,
    Context,
    Result,
    Row,
    children,
    espm_env,
    free_port,
    kib,
    kill_tree,
    listening,
    manager_argv,
    proc_status,
    spawn,
    wait_for,
)

if TYPE_CHECKING:
    from espm.standins.secret import SecretVolume

NAME = "memory"
IDLE = 1.0
LIMIT_MIB = 25.0
REQUESTS = 400
UPDATES = 5
PER_CONNECTION = 10
PATHS = ("/health", "/es/status", "/keystore/status", "/metrics", "/debug/vars", "/es/ready", "/openapi.json")
ES_USER, ES_PASSWORD = "elastic", "bench-password"
CHILD = ["sleep", "600"]

SUPERVISORD_CONF = """\
[supervisord]
nodaemon=true
user=root
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}
loglevel=warn

[inet_http_server]
port=127.0.0.1:{port}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:sleep]
command={command}
autorestart=false
startsecs=0
"""


def _footprint(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and the thread count of process `pid`, from /proc."""
    status = proc_status(pid)
    return {
        "VmRSS": kib(status["VmRSS"]),
        "VmHWM": kib(status["VmHWM"]),
        "threads": int(status["Threads"]),
    }


def _measure(argv: list[str], env: dict[str, str], port: int | None) -> dict[str, int]:
    proc = spawn(argv, env)
    try:
        wait_for(lambda: proc.poll() is not None or children(proc.pid), 15, f"the child of {argv[0]}")
        if port is not None:
            wait_for(lambda: proc.poll() is not None or listening(port), 15, f"port {port}")
        if proc.poll() is not None:
            raise BenchError(f"{argv[0]} exited with {proc.returncode}")
        time.sleep(IDLE)
        return _footprint(proc.pid)
    finally:
        kill_tree(proc)


def _https(port: int, ca: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(ca))
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)


def _get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    answer = conn.getresponse()
    return answer.status, answer.read()


@dataclass
class Pod:
    """A running espm with everything on, over the stand-in Elasticsearch and a Secret folder."""

    proc: subprocess.Popen[bytes]
    port: int
    ca_path: Path
    secrets: SecretVolume


@contextlib.contextmanager
def everything_on(root: Path, profiler: bool = False) -> Iterator[Pod]:
    """espm with HTTPS, the updater reloading over HTTPS, metrics and vars (and the profiler when
    asked), listening; both processes are killed on the way out. Shared with memory_soak.py."""
    from keystore_folders import KEYSTORE, write_tool

    from espm.standins.secret import SecretVolume
    from tests.certs import CA

    ca = CA(root / "ca", "bench-ca")
    api_cert = ca.issue("espm")
    es_cert = ca.issue("es-node")
    secrets = SecretVolume(root / "secrets")
    conf = root / "config"
    conf.mkdir()
    tool = write_tool(root / "elasticsearch-keystore")
    keystore = conf / KEYSTORE
    secrets.write({"s3.client.default.access_key": "a0", "s3.client.default.secret_key": "s0"})
    es_port = free_port()
    es = spawn(
        [PYTHON, "-m", "espm.standins.elasticsearch", "--port", str(es_port), "--cert",
         str(es_cert.cert), "--key", str(es_cert.key), "--user", ES_USER, "--password",
         ES_PASSWORD, "--keystore", str(keystore)],
        espm_env(),
    )  # fmt: skip
    port = free_port()
    env = espm_env(
        PM_HTTP_PORT=str(port),
        PM_TLS="true",
        PM_CERT_PATH=str(api_cert.cert),
        PM_KEY_PATH=str(api_cert.key),
        PM_METRICS="true",
        PM_EXP_VARS="true",
        PM_PROFILER="true" if profiler else "false",
        PM_KEYSTORE_UPDATER="true",
        KEYSTORE_SOURCE_DIR=str(secrets.path),
        KEYSTORE_BINARY=str(tool),
        KEYSTORE_PATH=str(keystore),
        KEYSTORE_RELOAD_CREDENTIALS="true",
        KEYSTORE_ES_ENDPOINT=f"https://127.0.0.1:{es_port}",
        KEYSTORE_ES_USERNAME=ES_USER,
        KEYSTORE_ES_PASSWORD=ES_PASSWORD,
        KEYSTORE_ES_CA_CERTS_PATH=str(ca.path),
    )
    proc = spawn(manager_argv("espm", CHILD, False), env)
    try:
        wait_for(lambda: proc.poll() is not None or listening(port), 15, f"port {port}")
        yield Pod(proc, port, ca.path, secrets)
    finally:
        kill_tree(proc)
        kill_tree(es)


def _loaded(ctx: Context) -> dict[str, int]:
    """espm with everything on, after REQUESTS requests and UPDATES updates."""
    with tempfile.TemporaryDirectory(prefix="espm-bench-memory-") as tmp, everything_on(Path(tmp)) as pod:

        def keystore_status() -> dict[str, int | str]:
            conn = _https(pod.port, pod.ca_path)
            try:
                doc: dict[str, int | str] = json.loads(_get(conn, "/keystore/status")[1])
                return doc
            finally:
                conn.close()

        def reloaded(count: int) -> bool:
            if pod.proc.poll() is not None:
                raise BenchError(f"espm exited with {pod.proc.returncode}")
            doc = keystore_status()
            return int(doc["reloads"]) >= count and doc["state"] == "running"

        wait_for(lambda: reloaded(1), 30, "the first build and reload", interval=0.05)
        codes: dict[int, int] = {}
        for i in range(0, REQUESTS, PER_CONNECTION):
            conn = _https(pod.port, pod.ca_path)
            for j in range(PER_CONNECTION):
                status, _ = _get(conn, PATHS[(i + j) % len(PATHS)])
                codes[status] = codes.get(status, 0) + 1
            conn.close()
        for n in range(UPDATES):
            pod.secrets.write(
                {"s3.client.default.access_key": f"a{n + 1}", "s3.client.default.secret_key": f"s{n}"}
            )
            wait_for(lambda n=n: reloaded(n + 2), 30, f"update {n + 1}", interval=0.05)
        time.sleep(IDLE)
        footprint = _footprint(pod.proc.pid)
        ctx.log(f"  everything on: answers {codes}; {keystore_status()['updates']} updates")
        return footprint


def run(ctx: Context) -> Result:
    result = Result(NAME)
    figures: dict[str, dict[str, int]] = {}
    port = free_port()
    figures["espm"] = _measure(manager_argv("espm", CHILD, False), espm_env(PM_HTTP_PORT=str(port)), port)
    plain = espm_env()
    figures["tini"] = _measure(manager_argv("tini", CHILD, False), plain, None)
    figures["dumb-init"] = _measure(manager_argv("dumb-init", CHILD, False), plain, None)
    figures["python"] = _measure(manager_argv("python", CHILD, False), plain, None)
    if os.access(SUPERVISORD, os.X_OK):
        with tempfile.TemporaryDirectory(prefix="espm-bench-supervisord-") as tmp:
            port = free_port()
            conf = os.path.join(tmp, "supervisord.conf")
            with open(conf, "w") as f:
                f.write(SUPERVISORD_CONF.format(dir=tmp, port=port, command=" ".join(CHILD)))
            figures["supervisord"] = _measure([SUPERVISORD, "-c", conf], plain, port)
    else:
        ctx.log(f"  supervisord: not installed ({SUPERVISORD}), left out")
    loaded = _loaded(ctx)
    mib = {m: {k: v / 1024 for k, v in f.items() if k.startswith("Vm")} for m, f in figures.items()}
    loaded_mib = loaded["VmRSS"] / 1024
    result.details = {"idle_seconds": IDLE, "kib": figures, "everything_on_kib": loaded}
    result.rows = [
        *(
            Row(
                metric,
                "MiB",
                {m: v[key] for m, v in mib.items()},
                f"espm <= {LIMIT_MIB:g} MiB",
                mib["espm"][key] <= LIMIT_MIB,
            )
            for key, metric in (("VmRSS", "VmRSS idle"), ("VmHWM", "VmHWM"))
        ),
        Row(
            f"VmRSS everything on, {REQUESTS} requests, {UPDATES} updates",
            "MiB",
            {"espm": loaded_mib, "python": mib["python"]["VmRSS"]},
            f"espm <= {LIMIT_MIB:g} MiB (anchor: espm idle {mib['espm']['VmRSS']:.1f})",
            loaded_mib <= LIMIT_MIB,
        ),
    ]
    return result
