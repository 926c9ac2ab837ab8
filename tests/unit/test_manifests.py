"""deploy/kubernetes/: valid against the Kubernetes schemas (offline), and wired as espm's contract says."""

from __future__ import annotations

import copy
import os
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from espm.config import VARIABLES

if os.environ.get("CI"):
    import kubernetes_validate  # in CI the validator must be there: never a silent skip
    import yaml
else:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install '.[test]'")
    yaml = pytest.importorskip("yaml")

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
FILES = sorted(MANIFESTS.glob("*.yaml"))
# The oldest Kubernetes minor still commonly run, and the newest whose schemas the validator ships.
VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate(doc: dict[str, Any], version: str) -> None:
    """Strict validation: an unknown field is an error, and so is a kind without a schema."""
    kubernetes_validate.validate(doc, version, strict=True)


def by_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in FILES for doc in documents(path) if doc["kind"] == kind]


STATEFULSETS = by_kind("StatefulSet")


def test_the_manifests_are_there() -> None:
    names = {path.name for path in FILES}
    assert {"statefulset.yaml", "statefulset-init-container.yaml", "networkpolicy.yaml"} <= names
    assert len(STATEFULSETS) == 2


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        validate(doc, version)


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "elasticsearch")


@pytest.mark.parametrize(
    ("what", "break_it"),
    [
        (
            "a misspelt field",
            lambda d: _container(d).__setitem__("volumeMount", _container(d).pop("volumeMounts")),
        ),
        (
            "a port that is not a number",
            lambda d: _container(d)["ports"][0].__setitem__("containerPort", "http"),
        ),
        ("a required field missing", lambda d: d["spec"].pop("selector")),
        (
            "a probe with two handlers",
            lambda d: _container(d)["livenessProbe"].__setitem__("exec", {"command": 1}),
        ),
    ],
)
def test_a_broken_manifest_is_refused(what: str, break_it: Any) -> None:
    doc = copy.deepcopy(STATEFULSETS[0][1])
    validate(doc, VERSIONS[-1])  # whole, it passes
    break_it(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(doc, VERSIONS[-1])


def test_an_unknown_kind_is_refused_not_skipped() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "NoSuchKind", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(doc, VERSIONS[-1])


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_validation_needs_no_network() -> None:
    """The schemas ship inside the package: the validator's own command passes with no network."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a network namespace here (not root)")
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            *map(str, FILES),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARN" not in proc.stdout  # every kind had its schema


# -- what the schemas cannot check: the pods are wired the way espm expects ---------------------


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def _value(container: dict[str, Any], name: str) -> str:
    return str(_env(container)[name]["value"])


def _mount_of(
    doc: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mount holding `path` (the deepest one) and the volume (or claim template) behind it."""
    mounts = [
        m
        for m in container["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"{path} is on no volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
    claims = {c["metadata"]["name"]: {"claim": c} for c in doc["spec"].get("volumeClaimTemplates", [])}
    return mount, {**volumes, **claims}[mount["name"]]


@pytest.mark.parametrize(("path", "doc"), STATEFULSETS, ids=lambda x: getattr(x, "name", ""))
def test_the_statefulset_wires_espm_as_its_contract_says(path: Path, doc: dict[str, Any]) -> None:
    c = _container(doc)
    env = _env(c)
    known = {v.name for v in VARIABLES}
    assert [n for n in env if n.startswith(("PM_", "KEYSTORE_")) and n not in known] == []  # no typo

    # The Secret folder at KEYSTORE_SOURCE_DIR, whole (a subPath mount is never updated by the kubelet).
    mount, volume = _mount_of(doc, c, _value(c, "KEYSTORE_SOURCE_DIR"))
    assert mount["mountPath"] == _value(c, "KEYSTORE_SOURCE_DIR") and "secret" in volume
    assert "subPath" not in mount

    # The keystore in a writable folder of its own volume, not a single-file mount.
    keystore = _value(c, "KEYSTORE_PATH")
    mount, volume = _mount_of(doc, c, keystore)
    assert mount["mountPath"] == posixpath.dirname(keystore)
    assert not mount.get("readOnly") and "subPath" not in mount
    assert "emptyDir" in volume or "claim" in volume
    # ... filled with the image's config by an init container, so Elasticsearch finds its files.
    inits = doc["spec"]["template"]["spec"]["initContainers"]
    assert any(
        m["name"] == mount["name"] and "/usr/share/elasticsearch/config/." in " ".join(i.get("command", []))
        for i in inits
        for m in i["volumeMounts"]
    )

    # TLS for the API from a Secret.
    assert _value(c, "PM_TLS") == "true"
    for name in ("PM_CERT_PATH", "PM_KEY_PATH"):
        assert "secret" in _mount_of(doc, c, _value(c, name))[1]

    # The reload credentials from a Secret.
    assert _value(c, "KEYSTORE_RELOAD_CREDENTIALS") == "true"
    assert "secretKeyRef" in env["KEYSTORE_ES_USERNAME"]["valueFrom"]
    assert "secret" in _mount_of(doc, c, _value(c, "KEYSTORE_ES_PASSWORD_FILE"))[1]
    assert "KEYSTORE_ES_PASSWORD" not in env  # never a password in the pod spec
    _mount_of(doc, c, _value(c, "KEYSTORE_ES_CA_CERTS_PATH"))

    # The state file on the data volume, which outlives the pod.
    assert "claim" in _mount_of(doc, c, _value(c, "PM_STATE_FILE"))[1]

    # Liveness on /health, readiness on /<name>/ready, on espm's port, over HTTPS.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    name = _value(c, "PM_PROC_NAME")
    for probe, route in (("livenessProbe", "/health"), ("readinessProbe", f"/{name}/ready")):
        get = c[probe]["httpGet"]
        assert get["path"] == route and get["scheme"] == "HTTPS"
        assert ports.get(get["port"], get["port"]) == int(_value(c, "PM_HTTP_PORT"))

    # Every Secret and ConfigMap it mounts or reads is one the folder provides.
    secrets = {d["metadata"]["name"] for _, d in by_kind("Secret")}
    config_maps = {d["metadata"]["name"] for _, d in by_kind("ConfigMap")}
    for volume in doc["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] in secrets
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
    for e in env.values():
        if "secretKeyRef" in e.get("valueFrom", {}):
            assert e["valueFrom"]["secretKeyRef"]["name"] in secrets

    # Parallel pod management: an ordered start would wait for ever on the first master.
    assert doc["spec"]["podManagementPolicy"] == "Parallel"


def test_the_init_container_variant_runs_espm_from_the_shared_folder() -> None:
    doc = next(d for p, d in STATEFULSETS if p.name == "statefulset-init-container.yaml")
    spec = doc["spec"]["template"]["spec"]
    c = _container(doc)
    assert c["image"].startswith("docker.elastic.co/elasticsearch/elasticsearch:")  # the stock image
    entry = c["command"][0]
    mount, volume = _mount_of(doc, c, entry)
    assert "emptyDir" in volume
    install = next(
        i for i in spec["initContainers"] if any(m["name"] == mount["name"] for m in i["volumeMounts"])
    )
    target = next(m["mountPath"] for m in install["volumeMounts"] if m["name"] == mount["name"])
    assert "install" in install["command"] and target in install["command"]
    assert posixpath.dirname(entry) == mount["mountPath"]


def test_the_network_policy_guards_the_api_port_of_those_pods() -> None:
    ((_, policy),) = by_kind("NetworkPolicy")
    for _, sts in STATEFULSETS:
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        port = int(_value(_container(sts), "PM_HTTP_PORT"))
        rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r["ports"])]
        assert rules and all(r.get("from") for r in rules)  # restricted to some peers, never open
    assert "Ingress" in policy["spec"]["policyTypes"]


# The rule docker-entrypoint.sh (Elasticsearch 7.x and 8.x images) applies to every X_FILE variable
# it is given: read the file into X, and stop unless the file has mode 400 or 600.
ENTRYPOINT_FILE_RULE = r"""#!/bin/sh
for name in $(env | cut -f1 -d= | grep '_FILE$'); do
  eval "path=\$$name"
  perms=$(stat -c %a "$path" 2>/dev/null) || { echo "ERROR: File $path does not exist" >&2; exit 1; }
  case $perms in
    400|600) ;;
    *) echo "ERROR: File $path from $name must have file permissions 400 or 600" >&2; exit 1;;
  esac
done
echo "entrypoint ran: $*"
"""


@pytest.mark.parametrize(("path", "doc"), STATEFULSETS, ids=lambda x: getattr(x, "name", ""))
def test_espms_file_variables_do_not_reach_the_images_entrypoint(
    path: Path, doc: dict[str, Any], tmp_path
) -> None:
    """espm keeps its own *_FILE variables from the image's entrypoint, which would refuse them."""
    from tests.conftest import PYTHON, base_env

    c = _container(doc)
    entrypoint = tmp_path / "docker-entrypoint.sh"
    entrypoint.write_text(ENTRYPOINT_FILE_RULE)
    entrypoint.chmod(0o755)
    password = tmp_path / "password"
    password.write_text("x\n")
    password.chmod(0o440)  # what fsGroup makes of a Secret's file
    # Every *_FILE variable of the pod: a Secret's file (440), except the state file espm writes.
    files = {n: str(password) for n in _env(c) if n.endswith("_FILE")}
    assert {"PM_STATE_FILE", "KEYSTORE_ES_PASSWORD_FILE"} <= set(files)
    files["PM_STATE_FILE"] = str(tmp_path / "espm-state.json")
    command = _value(c, "PM_PROC_CMD").replace("/usr/local/bin/docker-entrypoint.sh", str(entrypoint))

    def run(cmd: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in base_env().items() if not k.endswith("_FILE")}  # this machine's own
        env.update(PM_HTTP_PORT="0", PM_PROC_CMD=cmd, **files)
        return subprocess.run([PYTHON, "-m", "espm"], env=env, capture_output=True, text=True, timeout=30)

    proc = run(command)
    assert proc.returncode == 0 and proc.stdout == "entrypoint ran: eswrapper\n", proc.stderr
    # The same variables straight to the script, with no espm in between, stop it.
    direct = {**{k: v for k, v in base_env().items() if not k.endswith("_FILE")}, **files}
    proc = subprocess.run(
        [str(entrypoint), "eswrapper"], env=direct, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1 and "must have file permissions 400 or 600" in proc.stderr
