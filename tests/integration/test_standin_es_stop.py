"""The stand-in Elasticsearch ends on SIGTERM even while it is busy with requests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def _hammer(port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                s.recv(4096)
        except OSError:
            pass  # refused or reset once it stops: that is what we wait for


def test_sigterm_under_load_ends_the_standin(tmp_path: Path) -> None:
    # A SIGTERM raised inside socketserver's request handling used to be caught by its
    # `except Exception` and logged: the stand-in then served on and the SIGTERM was lost.
    for round_ in range(3):
        port_file = tmp_path / f"port-{round_}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "espm.standins.elasticsearch",
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the stand-in did not start"
            time.sleep(0.01)
        port = int(port_file.read_text())
        stop = threading.Event()
        clients = [threading.Thread(target=_hammer, args=(port, stop)) for _ in range(8)]
        for c in clients:
            c.start()
        try:
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(timeout=5) == 0, f"round {round_}"
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(f"round {round_}: SIGTERM lost, still serving after 5 s") from None
        finally:
            stop.set()
            for c in clients:
                c.join()
            if proc.poll() is None:
                proc.kill()
            assert proc.stderr is not None
            proc.stderr.close()
