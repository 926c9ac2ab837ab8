"""The soak (bench/soak.py): its checks on recorded samples, its fault proxy on real sockets, and
its 60-second run against a real espm, which must pass."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import soak  # noqa: E402
from soak import Kind, Sample  # noqa: E402

KIB = 1024


def series(values_mib: list[float], every: float = 2.0) -> list[Sample]:
    return [Sample(t=i * every, rss_kib=int(v * KIB)) for i, v in enumerate(values_mib)]


# -- rss --------------------------------------------------------------------------------------


def test_rss_flat_with_noise_passes() -> None:
    values = [27.0 + (0.3 if i % 7 == 0 else 0.0) for i in range(60)]
    assert soak.check_rss(series(values), warmup=40).passed


def test_rss_steady_leak_fails() -> None:
    # 3 MiB over the measured part: what a leak of 64 KiB per request looks like.
    values = [27.0] * 20 + [27.0 + 0.075 * i for i in range(40)]
    check = soak.check_rss(series(values), warmup=40)
    assert not check.passed and "growth after warm-up +2.7" in check.summary


def test_rss_one_sample_spike_is_not_growth_but_a_held_plateau_is() -> None:
    spike = [27.0] * 30 + [37.0] + [27.0] * 29
    assert soak.check_rss(series(spike), warmup=40).passed
    plateau = [27.0] * 30 + [29.5] * 10 + [27.0] * 20
    assert not soak.check_rss(series(plateau), warmup=40).passed


def test_rss_growth_is_measured_from_the_end_of_the_warm_up() -> None:
    # Climbing during the warm-up (imports, first TLS, caches) then flat: passes.
    values = [20.0 + i * 0.5 for i in range(20)] + [29.5] * 40
    assert soak.check_rss(series(values), warmup=40).passed


def test_rss_too_few_samples_fails() -> None:
    assert not soak.check_rss(series([27.0] * 5), warmup=4).passed


def test_rss_slopes_level_off() -> None:
    # Fast, then slow, then flat: the three thirds' slopes say so.
    values = [27.0 + min(i, 40) * 0.02 + min(max(i - 40, 0), 40) * 0.005 for i in range(120)]
    first, second, third = soak.rss_slopes(series(values, every=10.0), warmup=0)
    assert first > second > third == pytest.approx(0.0)


# -- leaks ------------------------------------------------------------------------------------


def sample(fds: int | None, threads: int | None, tasks: int | None) -> Sample:
    return Sample(t=0, rss_kib=0, fds=fds, threads=threads, tasks=tasks)


def test_leaks_back_to_baseline_passes() -> None:
    assert soak.check_leaks(sample(11, 1, 3), sample(11, 1, 3), []).passed
    assert soak.check_leaks(sample(11, 1, 3), sample(10, 1, 3), []).passed


@pytest.mark.parametrize("after", [sample(12, 1, 3), sample(11, 2, 3), sample(11, 1, 4)])
def test_one_more_fd_thread_or_task_fails(after: Sample) -> None:
    assert not soak.check_leaks(sample(11, 1, 3), after, []).passed


def test_a_zombie_or_missing_counts_fail() -> None:
    assert not soak.check_leaks(sample(11, 1, 3), sample(11, 1, 3), [4242]).passed
    assert not soak.check_leaks(sample(None, None, None), sample(None, None, None), []).passed
    assert not soak.check_leaks(sample(11, 1, 3), None, []).passed


# -- answers ----------------------------------------------------------------------------------


def test_answers_all_answered_passes() -> None:
    tally = soak.Tally()
    tally.record("health", 200)
    tally.record("ready", 503)
    tally.record("bad-431", 431)
    assert soak.check_answers(tally.kinds).passed


def test_an_unanswered_request_fails_and_is_named() -> None:
    tally = soak.Tally()
    tally.record("health", 200)
    tally.record("ready", None, "TimeoutError: The read operation timed out")
    check = soak.check_answers(tally.kinds)
    assert not check.passed and check.summary.startswith("1 of 2 requests answered")
    assert any("ready" in d and "TimeoutError" in d for d in check.details)


def test_an_unexpected_status_fails() -> None:
    tally = soak.Tally()
    tally.record("bad-smuggle", 200, "smuggled")
    assert not soak.check_answers(tally.kinds).passed


def test_nothing_sent_fails() -> None:
    assert not soak.check_answers({}).passed
    assert not soak.check_answers({"health": Kind()}).passed


# -- keystore ---------------------------------------------------------------------------------


def test_keystore_equal_to_the_valid_part_of_the_secret() -> None:
    secret = {"a.b": b"1", "c": b"\x00\xff", "--force": b"x", "bad name": b"y"}
    expected = soak.expected_keystore(secret)
    assert expected == {"a.b": b"1", "c": b"\x00\xff"}
    keystore = {**expected, "keystore.seed": b"seed"}
    assert soak.check_keystore(expected, keystore, ["a.b", "c"]).passed


@pytest.mark.parametrize(
    ("keystore", "listed"),
    [
        ({"a.b": b"1"}, ["a.b", "c"]),  # missing
        ({"a.b": b"1", "c": b"2", "old": b"3"}, ["a.b", "c"]),  # stale
        ({"a.b": b"1", "c": b"3"}, ["a.b", "c"]),  # other value
        ({"a.b": b"1", "c": b"2"}, ["a.b"]),  # the status lags
        (None, None),  # no file
    ],
)
def test_keystore_differences_fail(keystore: dict[str, bytes] | None, listed: list[str] | None) -> None:
    assert not soak.check_keystore({"a.b": b"1", "c": b"2"}, keystore, listed).passed


# -- the child's signal mask, on real processes -------------------------------------------------


def test_ignoring_reads_the_real_signal_mask() -> None:
    plain = subprocess.Popen(["sleep", "30"])
    ignoring = subprocess.Popen(
        [sys.executable, "-c", "import signal, time\n"
         "for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\n"
         "print('ready', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert ignoring.stdout is not None and ignoring.stdout.readline() == b"ready\n"
        assert soak.ignoring(ignoring.pid)
        assert not soak.ignoring(plain.pid)
    finally:
        for p in (plain, ignoring):
            p.send_signal(signal.SIGKILL)
            p.wait()
    assert not soak.ignoring(plain.pid)


# -- the fault proxy, on real sockets -----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca = soak.make_ca(folder, "ca")
    other = soak.make_ca(folder, "other")
    return {"ca": ca, "good": soak.issue(folder, ca, "node"), "wrong": soak.issue(folder, other, "impostor")}


def fetch(port: int, ca: Path, request: bytes, limit: int = 8 * 1024 * 1024) -> tuple[bytes, str]:
    """What an asyncio client trusting `ca` (as espm's is) gets: the bytes read, and how it ended."""

    async def run() -> tuple[bytes, str]:
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        got = b""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(request)
            while len(got) < limit:
                data = await asyncio.wait_for(reader.read(65536), 3)
                if not data:
                    return got, "eof"
                got += data
            writer.close()
            return got, "limit"
        except ssl.SSLCertVerificationError:
            return got, "bad-certificate"
        except ConnectionResetError:
            return got, "reset"
        except TimeoutError:
            return got, "timeout"

    return asyncio.run(run())


def test_fault_proxy_modes_misbehave_as_named(pki: dict[str, tuple[Path, Path]]) -> None:
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen()
    proxy = soak.FaultProxy(upstream.getsockname()[1], pki["good"], pki["wrong"])
    proxy.start()
    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    reload = b"POST /_nodes/_local/reload_secure_settings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"

    def answer() -> None:
        # The node behind the proxy in "ok" mode: TLS end to end, the proxy only passes bytes.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*pki["good"])
        conn, _ = upstream.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    node = threading.Thread(target=answer)
    node.start()
    try:
        got, end = fetch(proxy.port, pki["ca"][0], get)
        assert end == "eof" and got.endswith(b"\r\n\r\n{}")
        node.join(5)
        proxy.mode = "wrong-ca"
        assert fetch(proxy.port, pki["ca"][0], get)[1] == "bad-certificate"
        proxy.mode = "endless"
        got, end = fetch(proxy.port, pki["ca"][0], get)
        assert end == "limit" and got.startswith(b"HTTP/1.1 200 OK")
        # Once the client hung up, the endless writer stops (it does not write into the void).
        deadline = time.monotonic() + 3
        while proxy.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.active() == 0 and proxy.streamed < 32 * 1024 * 1024
        proxy.mode = "reset"
        assert {fetch(proxy.port, pki["ca"][0], get)[1] for _ in range(6)} == {"reset"}
        proxy.mode = "bad-json"
        for request, bodies in ((get, soak.BAD_ROOT), (reload, soak.BAD_RELOAD)):
            got, end = fetch(proxy.port, pki["ca"][0], request)
            head, _, body = got.partition(b"\r\n\r\n")
            assert end == "eof" and head.startswith(b"HTTP/1.1 200") and body in bodies
        proxy.mode = "timeout"
        started = time.monotonic()
        got, end = fetch(proxy.port, pki["ca"][0], get)
        assert end == "timeout" and time.monotonic() - started >= 2.9 and not got.endswith(b"\r\n\r\n")
    finally:
        proxy.close()
        upstream.close()


# -- the soak itself --------------------------------------------------------------------------


@pytest.mark.soak
@pytest.mark.timeout(420)
def test_soak_60_seconds(tmp_path: Path) -> None:
    """The CI soak: 60 s of everything at once; every check must pass (the output says which did not)."""
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--seconds", "60", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode != 2, run.stdout + run.stderr
    doc = json.loads(out.read_text())
    failed = [
        "\n    ".join([f"{c['name']}: {c['summary']}", *c["details"]])
        for c in doc["checks"]
        if not c["passed"]
    ]
    assert run.returncode == 0 and not failed, "\n".join(failed) + "\n\n" + run.stdout[-6000:]
    assert {c["name"] for c in doc["checks"]} == {"rss", "leaks", "answers", "keystore", "lifecycle", "log"}
    assert doc["counts"]["swaps"] >= 30 and doc["counts"]["storms"] >= 5 and doc["counts"]["cycles"] >= 3
    assert set(doc["proxy_connections"]) == set(soak.PHASES)


# -- log --------------------------------------------------------------------------------------


def test_log_tracebacks_are_counted_by_cause() -> None:
    record = {
        "log.level": "error",
        "message": "reload failed unexpectedly",
        "error.stack_trace": 'Traceback (most recent call last):\n  File "x", line 1\nAttributeError: no',
    }
    log = "\n".join(
        [
            json.dumps({"log.level": "info", "message": "Keystore updated"}),
            json.dumps(record),
            "Exception ignored when trying to write to the signal wakeup fd:",
            "Traceback (most recent call last):",
            '  File "signals.py", line 130, in _handle',
            "BlockingIOError: [Errno 11] Resource temporarily unavailable",
        ]
    )
    check = soak.check_log(log)
    assert not check.passed and check.summary.startswith("2 tracebacks")
    assert "1 x reload failed unexpectedly: AttributeError: no" in check.details
    assert any("wakeup fd" in d and "BlockingIOError" in d for d in check.details)
    assert soak.check_log(json.dumps({"message": "fine"})).passed


def test_lowest_takes_each_count_at_its_lowest() -> None:
    first = soak.lowest(None, sample(12, 1, 4))
    assert soak.lowest(first, sample(11, 2, 3)) == Sample(t=0, rss_kib=0, fds=11, threads=1, tasks=3)
    assert soak.lowest(first, sample(None, 1, 3)).fds is None
