"""HTTPS: TLS 1.2+, mutual TLS, certificate rotation, the client's TLS options, and readiness."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.certs import CA
from tests.conftest import PYTHON, base_env, free_port, wait_for
from tests.standin_es import ES_PASSWORD, StandinEs


def https_env(ca_dir: Path, **extra: str) -> tuple[dict[str, str], CA]:
    ca = CA(ca_dir)
    server = ca.issue("espm")
    env = base_env(
        PM_HTTP_PORT=str(free_port()),
        PM_TLS="true",
        PM_CERT_PATH=str(server.cert),
        PM_KEY_PATH=str(server.key),
        **extra,
    )
    return env, ca


def get(port: int, context: ssl.SSLContext, path: str = "/health") -> tuple[int, bytes, ssl.SSLObject | None]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read(), None
    finally:
        conn.close()


def peer_subject(port: int, context: ssl.SSLContext) -> str:
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def client_context(ca: CA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.path))


def test_https_serves_the_api_and_refuses_tls_1_1(espm, tmp_path) -> None:
    env, ca = https_env(tmp_path)
    m = espm(["sleep", "60"], env=env)
    m.wait_api()
    assert get(m.port, client_context(ca))[0] == 200
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(ca.path)
    with pytest.warns(DeprecationWarning):
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    # The client's own security level would refuse TLS 1.1 too: lower it, so only the server
    # can be the one saying no.
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    # (asyncio closes the connection without flushing the alert: an EOF is the refusal here.)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        get(m.port, old)
    # Plain HTTP to the HTTPS port gets nothing useful, and the server keeps serving.
    from tests.integration.test_api import raw

    assert not raw(m.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert get(m.port, client_context(ca))[0] == 200


def test_mutual_tls_accepts_signed_clients_and_refuses_others(espm, tmp_path) -> None:
    clients = CA(tmp_path / "clients", "client-ca")
    env, ca = https_env(tmp_path / "server", PM_CLIENT_CA_PATH=str(clients.path))
    m = espm(["sleep", "60"], env=env)
    m.wait_api()
    good = clients.issue("operator", client=True)
    context = client_context(ca)
    context.load_cert_chain(good.cert, good.key)
    assert get(m.port, context)[0] == 200

    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        get(m.port, client_context(ca))  # no certificate
    stranger = CA(tmp_path / "stranger", "other-ca").issue("intruder", client=True)
    context = client_context(ca)
    context.load_cert_chain(stranger.cert, stranger.key)
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        get(m.port, context)

    # The ctl client with --cert/--key/--cacert.
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "espm",
            "status",
            "--url",
            f"https://127.0.0.1:{m.port}",
            "--cacert",
            str(ca.path),
            "--cert",
            str(good.cert),
            "--key",
            str(good.key),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0 and "started" in proc.stdout
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "status", "--url", f"https://127.0.0.1:{m.port}", "--cacert", str(ca.path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 3


def test_certificate_rotation_without_dropping_the_server(espm, tmp_path) -> None:
    env, ca = https_env(tmp_path)
    m = espm(["sleep", "60"], env=env)
    m.wait_api()
    context = client_context(ca)
    assert peer_subject(m.port, context) == "espm"
    # An open keep-alive connection survives the rotation.
    conn = http.client.HTTPSConnection("127.0.0.1", m.port, context=context, timeout=5)
    conn.request("GET", "/health")
    assert conn.getresponse().read()

    # Half a rotation (new certificate, old key) is not taken: the old pair stays in service.
    rotated = ca.issue("espm-rotated", file_stem="next")
    shutil.copy(rotated.cert, env["PM_CERT_PATH"])
    m.wait_log("keeping the previous ones", timeout=5)
    assert peer_subject(m.port, context) == "espm"
    shutil.copy(rotated.key, env["PM_KEY_PATH"])
    m.wait_log("TLS certificate reloaded", timeout=5)
    assert peer_subject(m.port, context) == "espm-rotated"
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()


def test_client_reads_pm_tls_variables(espm, tmp_path) -> None:
    env, ca = https_env(tmp_path)
    m = espm(["sleep", "60"], env=env)
    m.wait_api()
    proc = subprocess.run(
        [PYTHON, "-m", "espm", "status", "--json", "--cacert", str(ca.path)],
        env={**env, "PM_HTTP_HOST": "0.0.0.0"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "started"


def ready_env(es: StandinEs, password: str = ES_PASSWORD, **extra: str) -> dict[str, str]:
    values = {
        "PM_HTTP_PORT": str(free_port()),
        "KEYSTORE_ES_ENDPOINT": es.endpoint,
        "KEYSTORE_ES_USERNAME": "elastic",
        "KEYSTORE_ES_PASSWORD": password,
        "KEYSTORE_ES_CA_CERTS_PATH": str(es.ca),
    }
    return base_env(**{**values, **extra})


def test_ready_checks_elasticsearch_with_the_updaters_credentials(espm, launch_es) -> None:
    es = launch_es()
    m = espm(["sleep", "60"], env=ready_env(es))
    m.wait_api()
    code, doc, _ = m.request("GET", "/es/ready")
    assert code == 200 and doc == {"ready": True}
    es.mode("unavailable")
    time.sleep(1.1)  # past the cache
    code, doc, _ = m.request("GET", "/es/ready")
    assert code == 503 and doc["ready"] is False and "503" in doc["reason"]


def test_ready_is_cached_and_never_more_than_one_check_in_flight(espm, launch_es) -> None:
    es = launch_es()
    m = espm(["sleep", "60"], env=ready_env(es))
    m.wait_api()
    before = es.stats()["root"]
    started = time.monotonic()
    for _ in range(60):
        assert m.request("GET", "/es/ready")[0] == 200
    elapsed = time.monotonic() - started
    checks = es.stats()["root"] - before
    assert 1 <= checks <= int(elapsed) + 2


def test_ready_with_wrong_credentials_or_unknown_ca_or_no_es(espm, launch_es, tmp_path) -> None:
    es = launch_es()
    m = espm(["sleep", "60"], env=ready_env(es, password="wrong"))
    m.wait_api()
    code, doc, _ = m.request("GET", "/es/ready")
    assert code == 503 and "401" in doc["reason"]
    other = CA(tmp_path / "other", "other-ca")
    m2 = espm(["sleep", "60"], env=ready_env(es, KEYSTORE_ES_CA_CERTS_PATH=str(other.path)))
    m2.wait_api()
    code, doc, _ = m2.request("GET", "/es/ready")
    assert code == 503 and "TLS" in doc["reason"]
    es.stop()
    time.sleep(1.1)
    code, doc, _ = m.request("GET", "/es/ready")
    assert code == 503 and "cannot connect to Elasticsearch" in doc["reason"] and "refused" in doc["reason"]


def test_ready_is_503_while_the_process_is_stopped(espm, launch_es) -> None:
    es = launch_es()
    m = espm(["sleep", "60"], env=ready_env(es))
    m.wait_api()
    m.request("POST", "/es/kill")
    wait_for(lambda: m.status()["state"] == "killed")
    code, doc, _ = m.request("GET", "/es/ready")
    assert code == 503 and "killed" in doc["reason"]


def test_ready_trusts_a_folder_of_ca_certificates(espm, launch_es, tmp_path) -> None:
    es = launch_es()
    folder = tmp_path / "http-certs"
    folder.mkdir()
    shutil.copy(str(es.ca), folder / "ca.crt")
    CA(tmp_path / "unrelated", "unrelated")  # another CA in another folder, not trusted
    m = espm(["sleep", "60"], env=ready_env(es, KEYSTORE_ES_CA_CERTS_PATH=str(folder)))
    m.wait_api()
    assert m.request("GET", "/es/ready")[0] == 200
