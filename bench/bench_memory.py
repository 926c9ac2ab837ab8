"""memory: the idle manager's VmRSS and VmHWM, with a `sleep` child and the API on.

Each manager runs `sleep 600`; once its child runs and its HTTP server listens (espm's API,
supervisord's XML-RPC inet_http_server), it is left idle for IDLE seconds and then
/proc/<manager>/status is read. No request is sent: the figure is the idle footprint.
tini and dumb-init have no API; they are the floor of a manager in C. "python" is the floor of
one in Python: the same interpreter (same site-packages and .pth files) that only forks the child
and waits for it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from harness import (
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
    wait_for,
)

NAME = "memory"
IDLE = 1.0
LIMIT_MIB = 25.0
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


def _measure(argv: list[str], env: dict[str, str], port: int | None) -> dict[str, int]:
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: proc.poll() is not None or children(proc.pid), 15, f"the child of {argv[0]}")
        if port is not None:
            wait_for(lambda: proc.poll() is not None or listening(port), 15, f"port {port}")
        if proc.poll() is not None:
            raise BenchError(f"{argv[0]} exited with {proc.returncode}")
        time.sleep(IDLE)
        status = proc_status(proc.pid)
        return {
            "VmRSS": kib(status["VmRSS"]),
            "VmHWM": kib(status["VmHWM"]),
            "threads": int(status["Threads"]),
        }
    finally:
        kill_tree(proc)


def run(ctx: Context) -> Result:
    result = Result(NAME)
    figures: dict[str, dict[str, int]] = {}
    port = free_port()
    figures["espm"] = _measure(manager_argv("espm", CHILD, False), espm_env(PM_HTTP_PORT=str(port)), port)
    plain = espm_env()
    figures["tini"] = _measure(manager_argv("tini", CHILD, False), plain, None)
    figures["dumb-init"] = _measure(manager_argv("dumb-init", CHILD, False), plain, None)
    figures["python"] = _measure(manager_argv("python", CHILD, False), plain, None)
    with tempfile.TemporaryDirectory(prefix="espm-bench-supervisord-") as tmp:
        port = free_port()
        conf = os.path.join(tmp, "supervisord.conf")
        with open(conf, "w") as f:
            f.write(SUPERVISORD_CONF.format(dir=tmp, port=port, command=" ".join(CHILD)))
        figures["supervisord"] = _measure([SUPERVISORD, "-c", conf], plain, port)
    mib = {m: {k: v / 1024 for k, v in f.items() if k.startswith("Vm")} for m, f in figures.items()}
    result.details = {"idle_seconds": IDLE, "kib": figures}
    result.rows = [
        Row(
            "VmRSS idle",
            "MiB",
            {m: v["VmRSS"] for m, v in mib.items()},
            f"espm <= {LIMIT_MIB:g} MiB",
            mib["espm"]["VmRSS"] <= LIMIT_MIB,
        ),
        Row(
            "VmHWM",
            "MiB",
            {m: v["VmHWM"] for m, v in mib.items()},
            f"espm <= {LIMIT_MIB:g} MiB",
            mib["espm"]["VmHWM"] <= LIMIT_MIB,
        ),
    ]
    return result
