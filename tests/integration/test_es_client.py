"""The Elasticsearch client against misbehaving endpoints: bounded answers, named faults, flat memory.

Each endpoint is a real server on a real socket (tests/faulty_es.py). The client's loop is
tests/fixtures/es_client_loop.py: the memory tests run it in its own process, so that its RSS is
its own; the tests of reasons run it in this one.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.certs import CA
from tests.conftest import PYTHON, fixture, wait_for
from tests.faulty_es import FaultyEs
from tests.fixtures.es_client_loop import attempts, client_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    trusted = CA(folder / "trusted", "trusted-ca")
    other = CA(folder / "other", "other-ca")

    def server(ca: CA) -> ssl.SSLContext:
        issued = ca.issue("es-node")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert, issued.key)
        return context

    return {"ca": trusted.path, "good": server(trusted), "wrong": server(other)}


def run_client(es: FaultyEs, ca: Path, count: int, timeout: float = 5.0) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, fixture("es_client_loop.py"), es.endpoint, str(ca), str(count), str(timeout)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0 and not out.stderr, out.stderr.decode()[-3000:]
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def reasons_of(es: FaultyEs, ca: Path, count: int, timeout: float = 5.0) -> dict[str, Any]:
    """The same loop in this process (real sockets and TLS, no process start): reasons and answers."""
    return asyncio.run(attempts(client_for(es.endpoint, ca, timeout), count))


FAULTS: dict[str, tuple[str, str, list[str]]] = {
    # name: (fault, TLS certificate, texts every reason must contain)
    "wrong CA": (
        "silent",
        "wrong",
        ["certificate failed the check", "unable to get local issuer certificate"],
    ),
    # Over TLS, asyncio reports a reset after the handshake as a reset or as an end of the stream.
    "reset after the handshake": ("reset", "good", ["the connection before answering"]),
    # A reset can come before the client's connect() has returned: "Connection reset by peer".
    "reset": ("reset", "", ["reset"]),
    "closed before answering": ("close", "good", ["Elasticsearch closed the connection before answering"]),
    "never answering": ("silent", "good", ["no answer from Elasticsearch within 0.3s (before answering)"]),
    # A byte every 0.2 s: no read ever waits long, the whole request does.
    "trickling": ("trickle", "", ["no answer from Elasticsearch within 0.3s (before answering)"]),
    "endless chunked body": ("endless", "good", ["an answer larger than 256 KiB"]),
    "endless body to the close": ("endless-close", "", ["an answer larger than 256 KiB"]),
    "endless head": ("headers", "", ["an answer head larger than 64 KiB"]),
    "500 headers": ("many-headers", "", ["an answer with more than 100 headers"]),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_is_named_in_the_reason(pki, name) -> None:
    fault, cert, texts = FAULTS[name]
    es = FaultyEs(fault, pki[cert] if cert else None)
    try:
        started = time.monotonic()
        doc = reasons_of(es, pki["ca"], 4, timeout=0.3 if fault in ("silent", "trickle") else 5.0)
        elapsed = time.monotonic() - started
    finally:
        es.close()
    assert doc["answers"] == 0
    assert sum(doc["reasons"].values()) == 4
    for reason in doc["reasons"]:
        for text in texts:
            assert text in reason, doc["reasons"]
    assert elapsed < 10


WEIRD_JSON = {
    "[]": ["unexpected answer to GET /: the body is a list, not an object"],
    '"yes"': ["unexpected answer to POST /_nodes/_local/reload_secure_settings: the body is a string"],
    "not json": ["unexpected answer to GET /: HTTP 200 without JSON"],
    '{"version": "8.15.0"}': ["unexpected answer to GET /: `version` is a string, not an object"],
    '{"version": {"number": 8}}': ["`version.number` is a number, not a string or null"],
    '{"_nodes": "all"}': ["reload_secure_settings: `_nodes` is a string, not an object"],
    '{"_nodes": {"failed": true}}': ["`_nodes.failed` is true or false, not a number"],
    '{"_nodes": {"failed": 1, "failures": 5}}': ["`_nodes.failures` is a number, not a list or null"],
    '{"nodes": []}': ["`nodes` is a list, not an object"],
    '{"nodes": {"n1": "ok"}}': ["`nodes.n1` is a string, not an object"],
    '{"nodes": {"n1": {"reload_exception": 3}}}': ["`nodes.n1.reload_exception` is a number"],
    '{"nodes": {"n1": {"keystore_digest": {}}}}': ["`nodes.n1.keystore_digest` is an object"],
}


@pytest.mark.parametrize("body", list(WEIRD_JSON))
def test_unexpected_json_gives_a_clear_reason(pki, body) -> None:
    es = FaultyEs(f"json:{body}", pki["good"])
    try:
        doc = reasons_of(es, pki["ca"], 4)
    finally:
        es.close()
    reasons = " | ".join(doc["reasons"])
    for text in WEIRD_JSON[body]:
        assert text in reasons, reasons


MEMORY_FAULTS = {
    # name: (fault, certificate, attempts, timeout): attempts as many as minutes of retries
    "wrong CA": ("silent", "wrong", 600, 5.0),
    "reset after the handshake": ("reset", "good", 600, 5.0),
    "endless chunked body": ("endless", "good", 300, 5.0),
    "endless body to the close": ("endless-close", "", 300, 5.0),
    "never answering": ("silent", "good", 300, 0.01),
    "weird JSON": ('json:{"nodes": {"n1": []}, "version": []}', "good", 600, 5.0),
}
RSS_GROWTH_KIB = 512


@pytest.mark.parametrize("name", list(MEMORY_FAULTS))
def test_memory_stays_flat_under_a_fault(pki, name) -> None:
    fault, cert, attempts, timeout = MEMORY_FAULTS[name]
    es = FaultyEs(fault, pki[cert] if cert else None)
    try:
        doc = run_client(es, pki["ca"], attempts, timeout)
    finally:
        es.close()
    assert doc["answers"] == 0 and sum(doc["reasons"].values()) == attempts
    growth = doc["rss_end_kib"] - doc["rss_warm_kib"]
    print(f"{name}: RSS {doc['rss_warm_kib']} -> {doc['rss_end_kib']} KiB over {attempts * 9 // 10} attempts")
    assert growth <= RSS_GROWTH_KIB, f"RSS grew {growth} KiB over {attempts * 9 // 10} attempts"
    if cert:
        assert doc["contexts_built"] == 1  # one TLS context for every attempt


def test_the_tls_context_is_rebuilt_when_the_ca_changes(pki, tmp_path) -> None:
    """A CA mounted late (or rotated) is picked up without a restart."""
    import asyncio
    from types import SimpleNamespace

    from espm.keystore.elasticsearch import ElasticsearchClient, Unreachable

    es = FaultyEs('json:{"version": {"number": "8.15.0"}}', pki["good"])
    ca = tmp_path / "ca.crt"
    config: Any = SimpleNamespace(es_endpoint=es.endpoint, ca_certs_path=ca, es_username="", es_password="")
    client = ElasticsearchClient(config)

    async def attempt() -> str:
        try:
            return str((await client.get_root()).status)
        except Unreachable as err:
            return str(err)

    try:
        assert "cannot load the CA certificates" in asyncio.run(attempt())
        ca.write_bytes(pki["ca"].read_bytes())
        assert asyncio.run(attempt()) == "200"
        assert asyncio.run(attempt()) == "200"
        assert client.contexts_built == 1
    finally:
        es.close()


# -- what the manager shows ----------------------------------------------------------------


MANAGER_FAULTS = {
    # name: (fault, certificate, text in /keystore/status and /es/ready)
    "wrong CA": ("silent", "wrong", "certificate failed the check: unable to get local issuer certificate"),
    "reset": ("reset", "", "reset"),
    "weird JSON": ('json:{"version": "8"}', "good", "unexpected answer to GET /: `version` is a string"),
    "endless body": ("endless", "good", "an answer larger than 256 KiB"),
}


def _updater_env(tmp_path: Path, es: FaultyEs, pki: dict[str, Path]) -> dict[str, str]:
    """A Secret folder with one setting and an updater that reloads through `es`."""
    from tests.keystore_fixtures import KeystoreSetup

    ks = KeystoreSetup(tmp_path)
    ks.secrets.write({"a": "1"})
    return ks.env(
        KEYSTORE_RELOAD_CREDENTIALS="true",
        KEYSTORE_ES_ENDPOINT=es.endpoint,
        KEYSTORE_ES_USERNAME="elastic",
        KEYSTORE_ES_PASSWORD="pw",
        KEYSTORE_ES_CA_CERTS_PATH=str(pki["ca"]),
    )


@pytest.mark.parametrize("name", list(MANAGER_FAULTS))
def test_the_status_and_readiness_name_the_fault(espm, pki, tmp_path, name) -> None:
    from tests.keystore_fixtures import status

    fault, cert, text = MANAGER_FAULTS[name]
    es = FaultyEs(fault, pki[cert] if cert else None)
    env = _updater_env(tmp_path, es, pki)
    try:
        m = espm(["sleep", "600"], env=env)
        m.wait_api()
        doc = wait_for(
            lambda: (d := status(m))["state"] == "waiting" and text in d["reason"] and d, timeout=15
        )
        assert doc["reason"].startswith("Waiting for Elasticsearch to be ready: "), doc
        code, ready, _ = m.request("GET", "/es/ready")
        assert code == 503 and text in ready["reason"], ready
    finally:
        es.close()
    # Said once, not once per retry.
    said = [r for r in m.read_logs(0.2) if text in str(r.get("message"))]
    assert len(said) == 1, said


def test_readiness_answers_within_a_kubelet_timeout_when_elasticsearch_never_answers(espm, pki) -> None:
    from tests.conftest import base_env

    es = FaultyEs("silent", pki["good"])
    env = base_env(KEYSTORE_ES_ENDPOINT=es.endpoint, KEYSTORE_ES_CA_CERTS_PATH=str(pki["ca"]))
    try:
        m = espm(["sleep", "600"], env=env)
        m.wait_api()
        for _ in range(3):
            started = time.monotonic()
            code, doc, _ = m.request("GET", "/es/ready", timeout=5)
            assert time.monotonic() - started < 1.0
            assert code == 503 and "no answer from Elasticsearch within 0.8s" in doc["reason"], doc
    finally:
        es.close()


def test_an_unexpected_reload_answer_fails_the_reload_with_a_reason_not_a_traceback(
    espm, pki, tmp_path
) -> None:
    from tests.keystore_fixtures import status

    es = FaultyEs('reload-json:{"_nodes": {"failed": 1, "failures": 5}}', pki["good"])
    env = _updater_env(tmp_path, es, pki)
    try:
        m = espm(["sleep", "600"], env=env)
        m.wait_api()
        doc = wait_for(lambda: (d := status(m))["state"] == "failed" and d, timeout=15)
    finally:
        es.close()
    assert doc["reason"] == (
        "Failed to reload secure settings: unexpected answer to POST "
        "/_nodes/_local/reload_secure_settings: `_nodes.failures` is a number, not a list or null"
    ), doc
    assert not [r for r in m.read_logs(0.2) if "unexpectedly" in str(r.get("message"))]
