"""What a new user meets first: the ctl client's errors and restart, typos, log lines, metrics, the demo."""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from espm import __version__
from espm.cli import COMMANDS, _top_parser
from espm.suggest import sub_commands
from tests.certs import CA
from tests.conftest import PYTHON, base_env, descendants, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def ctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "espm", *args], env=base_env(**env), capture_output=True, text=True, timeout=30
    )


# -- the distribution's name ------------------------------------------------------------------


def test_the_distribution_is_not_named_like_the_unrelated_espm_on_the_index() -> None:
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name == "espm-elasticsearch"
    # Installed under that name, with the version `espm --version` prints.
    assert importlib.metadata.version(name) == __version__
    proc = ctl("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"espm {__version__}"


# -- the ctl client ---------------------------------------------------------------------------


def test_an_error_answer_prints_no_half_empty_status(espm) -> None:
    m = espm(["sleep", "60"])
    m.wait_api()
    proc = ctl("status", "--pm-proc-name", "nope", PM_HTTP_PORT=str(m.port))
    assert proc.returncode == 1
    assert proc.stdout == "" and "None" not in proc.stderr
    assert "HTTP 404" in proc.stderr
    proc = ctl("keystore", PM_HTTP_PORT=str(m.port))  # the updater is off: 404
    assert proc.returncode == 1 and proc.stdout == ""
    assert "keystore updater is off" in proc.stderr


def test_a_url_without_a_scheme_or_a_port_reaches_the_manager(espm) -> None:
    m = espm(["sleep", "60"])
    m.wait_api()
    for url in (f"127.0.0.1:{m.port}", f"localhost:{m.port}"):
        proc = ctl("status", "--url", url)
        assert proc.returncode == 0 and proc.stdout.startswith("es  started"), (url, proc.stderr)
    # No port: the manager's (PM_HTTP_PORT), never the scheme's 80.
    proc = ctl("status", "--url", "http://127.0.0.1", PM_HTTP_PORT=str(m.port))
    assert proc.returncode == 0 and proc.stdout.startswith("es  started"), proc.stderr
    proc = ctl("status", "--url", "ftp://127.0.0.1:21")
    assert proc.returncode == 2 and "expected http://HOST:PORT" in proc.stderr
    for args in (["--url", "http://127.0.0.1:99999"], ["--pm-http-port", "abc"]):
        proc = ctl("status", *args)
        assert proc.returncode == 2 and "the port is not a number" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.fixture
def https_manager(espm, tmp_path) -> tuple[Any, CA, CA]:
    """A manager serving HTTPS with mutual TLS, and the CAs of its server and client certificates."""
    ca = CA(tmp_path / "server")
    server = ca.issue("espm")
    clients = CA(tmp_path / "clients", "client-ca")
    env = base_env(
        PM_HTTP_PORT=str(free_port()),
        PM_TLS="true",
        PM_CERT_PATH=str(server.cert),
        PM_KEY_PATH=str(server.key),
        PM_CLIENT_CA_PATH=str(clients.path),
    )
    m = espm(["sleep", "60"], env=env)
    m.wait_api()
    return m, ca, clients


def test_tls_errors_say_what_to_pass_and_never_cannot_reach(espm, https_manager) -> None:
    m, ca, clients = https_manager
    url = f"https://127.0.0.1:{m.port}"
    plain = espm(["sleep", "60"])
    plain.wait_api()
    cases = [
        (["--url", url], ("--cacert", "--insecure")),  # the server's CA is not trusted
        (["--url", url, "--cacert", str(ca.path)], ("--cert and --key",)),  # no client certificate
        (["--url", f"http://127.0.0.1:{m.port}"], ("--pm-tls=true",)),  # plain HTTP to HTTPS
        (["--url", f"https://127.0.0.1:{plain.port}"], ("--pm-tls=false",)),  # HTTPS to plain HTTP
    ]
    for args, advice in cases:
        proc = ctl("status", *args)
        assert proc.returncode == 3, proc.stderr
        assert all(a in proc.stderr for a in advice), (args, proc.stderr)
        # The server answered: it is not "cannot reach".
        assert "cannot reach" not in proc.stderr and proc.stdout == "", (args, proc.stderr)
    good = clients.issue("operator", client=True)
    tls = ["--cacert", str(ca.path), "--cert", str(good.cert), "--key", str(good.key)]
    proc = ctl("status", "--url", url, *tls)
    assert proc.returncode == 0 and proc.stdout.startswith("es  started")
    # Only a refused connection is "cannot reach".
    proc = ctl("status", "--url", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 3 and "cannot reach the manager" in proc.stderr


def test_restart_stops_waits_for_the_end_then_starts(espm) -> None:
    m = espm(["sleep", "60"])
    m.wait_api()
    before = m.status()
    proc = ctl("restart", PM_HTTP_PORT=str(m.port))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("es  started")
    after = m.status()
    assert after["state"] == "started" and after["starts"] == 2 and after["pid"] != before["pid"]


def test_restart_gives_up_when_the_process_does_not_end_in_time(espm) -> None:
    m = espm(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
    m.wait_api()
    started = time.monotonic()
    proc = ctl("restart", "--wait", "1", PM_HTTP_PORT=str(m.port))
    assert proc.returncode == 1 and "still stopping after 1 s" in proc.stderr
    assert 1 <= time.monotonic() - started < 10
    assert m.status()["state"] == "stopping"  # not started a second time beside the first


# -- typos ------------------------------------------------------------------------------------


def test_a_mistyped_sub_command_or_flag_gets_the_closest_match() -> None:
    proc = ctl("stauts")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "espm: unknown command 'stauts' (did you mean status?)"
    assert len(proc.stderr.splitlines()) <= 2
    proc = ctl("status", "--insecrue")
    assert proc.returncode == 2 and "unknown flag --insecrue (did you mean --insecure?)" in proc.stderr
    proc = ctl("--pm-htpp-port", "9")
    assert (
        proc.returncode == 2 and "unknown flag --pm-htpp-port (did you mean --pm-http-port?)" in proc.stderr
    )
    assert len(proc.stderr.splitlines()) <= 2  # not the usage of every flag
    proc = ctl("sleep", "1")  # no command of ours looks like it: perhaps a program to run
    assert proc.returncode == 2 and "(to run a program: espm -- sleep ...)" in proc.stderr
    proc = ctl("run", "sleep", "1")
    assert proc.returncode == 2 and "(a command goes after --: espm run -- CMD ARGS)" in proc.stderr


def test_the_sub_commands_suggested_are_the_parsers_own() -> None:
    assert sub_commands(_top_parser()) == list(COMMANDS)


def test_a_mistyped_variable_is_warned_about_at_start() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "--", "true"],
        env=base_env(
            PM_HTTP_PORT="0",
            PM_LOG_FORMAT="text",
            PM_HTPP_PORT="9",
            KEYSTORE_SORCE_DIR="/x",
            KEYSTORE_PASSWORD="for docker-entrypoint.sh",
        ),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0
    warnings = [line for line in proc.stderr.splitlines() if " WARNING " in line]
    assert any("PM_HTPP_PORT" in w and "did you mean PM_HTTP_PORT?" in w for w in warnings), proc.stderr
    assert any("KEYSTORE_SORCE_DIR" in w and "did you mean KEYSTORE_SOURCE_DIR?" in w for w in warnings)
    # Known names are not warned about, nor the image's own KEYSTORE_PASSWORD.
    assert len(warnings) == 2, warnings


# -- log lines --------------------------------------------------------------------------------


def test_sigterm_and_a_remapped_status_are_logged_at_info(espm) -> None:
    env = base_env(PM_LOG_LEVEL="info", PM_SUCCESS_EXIT_CODES="143")
    m = espm(["sh", "-c", "trap 'exit 143' TERM; echo ready; while :; do sleep 0.05; done"], env=env)
    assert m.readline() == "ready"
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    m.read_logs(0.2)
    forwarded = m.wait_log(r"^forwarded SIGTERM")
    assert forwarded["log.level"] == "info"
    remapped = m.wait_log(r"PM_SUCCESS_EXIT_CODES")
    assert remapped["log.level"] == "info" and "143" in remapped["message"]
    assert not [r for r in m.logs if "-> failed" in str(r.get("message"))], m.logs


@pytest.mark.parametrize(("code", "logged_as_failed"), [(0, False), (3, True)])
def test_a_clean_exit_is_not_logged_as_failed(code: int, logged_as_failed: bool) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "--", "sh", "-c", f"exit {code}"],
        env=base_env(PM_HTTP_PORT="0", PM_LOG_FORMAT="text", PM_LOG_LEVEL="info"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == code
    assert ("-> failed" in proc.stderr) is logged_as_failed, proc.stderr
    if not logged_as_failed:
        assert "started -> ended cleanly (exit 0)" in proc.stderr


# -- /metrics ---------------------------------------------------------------------------------


def test_metrics_print_integers_and_times_at_full_precision(espm) -> None:
    m = espm(["sleep", "60"], env=base_env(PM_METRICS="true"))
    m.wait_api()
    for _ in range(3):
        m.request("GET", "/health")
    code, body, _ = m.request("GET", "/metrics")
    assert code == 200
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = value
    # Counters and sizes are integers, written as such (no 1.23457e+07).
    for name, value in samples.items():
        if name != "process_start_time_seconds":
            assert re.fullmatch(r"\d+", value), (name, value)
    rss = int(samples["process_resident_memory_bytes"])
    status = Path(f"/proc/{m.pid}/status").read_text()
    vm_rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    assert abs(rss - vm_rss) < 4 << 20  # the same figure, taken a moment apart
    assert int(samples["espm_http_requests_total"]) >= 3
    # The start time is the wall clock of a moment ago, to the millisecond (not 1.76461e+09).
    started = float(samples["process_start_time_seconds"])
    assert 0 <= time.time() - started < 30
    assert "e+" not in samples["process_start_time_seconds"]


# -- the demo ---------------------------------------------------------------------------------


class Lines:
    """The lines a process prints on its stdout pipe, read without blocking past a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def next(self, pattern: str = ".", timeout: float = 60) -> str:
        """The next line matching `pattern` (lines before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                raw, _, self.buffer = self.buffer.partition(b"\n")
                line = raw.decode()
                self.seen.append(line)
                if re.search(pattern, line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no line matching {pattern!r} in {self.seen}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"stdout closed before {pattern!r}: {self.seen}")
            self.buffer += chunk


def test_the_demos_rotation_hint_works_and_sigterm_cleans_up_like_ctrl_c() -> None:
    demo = subprocess.Popen(
        [PYTHON, "-m", "espm", "demo", "--keep", "--tool-delay", "0.1"],
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    lines = Lines(demo)
    try:
        folder = Path(lines.next(r"^demo folder: ").split(": ", 1)[1].strip())
        port = int(lines.next(r"^espm API: ").rsplit(":", 1)[1].split()[0])
        lines.next(r"Running\. Try")
        lines.next(r"To change a secret the way Kubernetes does")
        hint = [lines.next() + "\n" for _ in range(4)]
        assert hint[0].strip() == f"cd {folder / 'secrets'}"
        if shutil.which("openssl"):
            assert (folder / "certs" / "ca.key").exists()  # the demo's CA key: what must not be left behind

        # The hint, run as printed, reaches the keystore and Elasticsearch (a third reload).
        subprocess.run(["sh", "-ec", "".join(hint)], check=True, timeout=10)

        def reloads() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/keystore/status")
                return int(json.loads(conn.getresponse().read())["reloads"])
            finally:
                conn.close()

        wait_for(lambda: reloads() >= 3, timeout=30, interval=0.1)

        below = descendants(demo.pid)
        assert len(below) >= 2  # the manager and the stand-in Elasticsearch at least
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(30) == 0  # espm's own status: the stand-in ended by SIGTERM, 143 -> 0
        for pid in below:
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=10)
        assert not folder.exists()  # with the CA key it held
    finally:
        if demo.poll() is None:
            for pid in [demo.pid, *descendants(demo.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            demo.wait(10)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
