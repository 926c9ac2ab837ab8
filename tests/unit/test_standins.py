"""Black-box tests of the stand-ins: the keystore tool and Elasticsearch run as real subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from espm.standins.keystore_tool import (
    DEFAULT_VERSION,
    SEED_CHARS,
    STDIN_CLOSED,
    encode_keystore,
    parse_keystore,
)
from tests.standin_es import ES_USER, EsLauncher, Pki
from tests.standin_es import StandinEs as Es

SRC = Path(__file__).resolve().parents[2] / "src"
USER = ES_USER
NOT_FOUND = "Elasticsearch keystore not found at [{}]. Use 'create' command to create one."
BAD_NAME = "Setting name [bad name] does not match the allowed setting name pattern [[A-Za-z0-9_\\-.]+]"


def _env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("STANDIN_") and name not in ("ES_PATH_CONF", "ES_HOME")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


# --- elasticsearch-keystore --------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


@dataclass
class Tool:
    """Runs the stand-in tool with ES_PATH_CONF pointing at `conf`."""

    conf: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def keystore(self) -> Path:
        return self.conf / "elasticsearch.keystore"

    @property
    def tmp(self) -> Path:
        return self.conf / "elasticsearch.keystore.tmp"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "espm.standins.keystore_tool", *args]

    def env(self, **extra: str) -> dict[str, str]:
        return _env(**{"ES_PATH_CONF": str(self.conf), **self.extra_env, **extra})

    def __call__(self, *args: str, stdin: bytes | None = b"", cwd: Path | None = None, **env: str) -> Run:
        """stdin None is /dev/null; bytes are written to a pipe that is then closed."""
        done = subprocess.run(
            self.command(*args),
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            env=self.env(**env),
            cwd=cwd or self.conf.parent,
            timeout=20,
            check=False,
        )
        return Run(done.returncode, done.stdout.decode(), done.stderr.decode())

    def settings(self) -> dict[str, bytes]:
        return parse_keystore(self.keystore.read_bytes())

    def write(self, **settings: bytes) -> bytes:
        """A keystore in the format of the tool version this Tool runs."""
        version = self.extra_env.get("STANDIN_KEYSTORE_VERSION", DEFAULT_VERSION)
        data = encode_keystore({"keystore.seed": b"0123456789abcdefghij", **settings}, version=version)
        self.keystore.write_bytes(data)
        return data

    def value(self, name: str, content: bytes) -> Path:
        path = self.conf.parent / "values" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        return path


# The command line, prompts and errors of 8.12 and 8.15 are the same; 8.12 writes format 5 (10,000
# PBKDF2 rounds, ~4 ms) where 8.15 writes format 6 (210,000, ~80 ms a read or a write). Formats per
# version are tested in test_standin_keystore_files.py, with the tool's default version.
FAST_VERSION = "8.12.1"


@pytest.fixture
def tool(tmp_path: Path) -> Tool:
    conf = tmp_path / "config"
    conf.mkdir()
    return Tool(conf, {"STANDIN_KEYSTORE_VERSION": FAST_VERSION})


def _error(message: str, code: int) -> str:
    """What the 8.10+ tool prints for a UserException: an empty line, then the ERROR line."""
    return f"\nERROR: {message}, with exit code {code}\n"


def test_create_makes_a_keystore_holding_only_a_seed(tool: Tool) -> None:
    run = tool("create")
    assert (run.code, run.stdout) == (0, f"Created elasticsearch keystore in {tool.keystore}\n")
    settings = tool.settings()
    assert list(settings) == ["keystore.seed"]
    seed = settings["keystore.seed"].decode()
    assert len(seed) == 20 and set(seed) <= set(SEED_CHARS)
    assert stat.S_IMODE(tool.keystore.stat().st_mode) == 0o660
    assert not tool.tmp.exists()
    assert tool("list") == Run(0, "keystore.seed\n", "")


def test_create_over_an_existing_keystore_asks_and_an_empty_answer_is_no(tool: Tool) -> None:
    before = tool.write(a=b"1")
    run = tool("create", stdin=b"\n")
    assert run.code == 0
    assert "An elasticsearch keystore already exists. Overwrite? [y/N]" in run.stderr
    assert "Exiting without creating keystore." in run.stdout
    assert tool.keystore.read_bytes() == before
    run = tool("create", stdin=b"maybe\ny\n")
    assert run.code == 0
    assert "Did not understand answer 'maybe'" in run.stderr
    assert list(tool.settings()) == ["keystore.seed"]


def test_a_prompt_on_closed_stdin_fails_instead_of_answering(tool: Tool) -> None:
    # The real tool throws when stdin is at EOF: a caller that forgets -f sees a failure.
    before = tool.write(a=b"1")
    run = tool("create", stdin=None)
    assert run.code == 70
    assert f"java.lang.IllegalStateException: {STDIN_CLOSED}" in run.stderr
    assert tool.keystore.read_bytes() == before
    tool.keystore.unlink()
    run = tool("add-file", "a", str(tool.value("a", b"x")), stdin=b"")
    assert run.code == 70
    assert "The elasticsearch keystore does not exist. Do you want to create it? [y/N]" in run.stderr
    assert not tool.keystore.exists()


def test_list_and_remove_need_a_keystore(tool: Tool) -> None:
    missing = _error(NOT_FOUND.format(tool.keystore), 65)
    assert tool("list") == Run(65, "", missing)
    assert tool("remove", "a") == Run(65, "", missing)
    assert not tool.keystore.exists()


def test_add_file_stores_the_exact_bytes_of_every_pair_in_one_run(tool: Tool) -> None:
    values = {"s3.client.default.secret_key": b"line1\nline2\n", "bin": b"\x00\xff\r\n", "empty": b""}
    args = [part for name, value in values.items() for part in (name, str(tool.value(name, value)))]
    run = tool("add-file", "-f", *args)
    assert run == Run(0, "", "")
    settings = tool.settings()
    assert {name: settings[name] for name in values} == values
    assert tool("list").stdout == "bin\nempty\nkeystore.seed\ns3.client.default.secret_key\n"


def test_add_file_without_force_asks_before_creating_a_keystore(tool: Tool) -> None:
    path = str(tool.value("a", b"x"))
    run = tool("add-file", "a", path, stdin=b"\n")
    assert run.code == 0 and "Exiting without creating keystore." in run.stdout
    assert not tool.keystore.exists()
    assert tool("add-file", "a", path, stdin=b"y\n").code == 0
    assert tool.settings()["a"] == b"x"


def test_add_file_without_force_asks_before_overwriting(tool: Tool) -> None:
    before = tool.write(a=b"old")
    path = str(tool.value("a", b"new"))
    run = tool("add-file", "a", path, stdin=b"n\n")
    assert run.code == 0
    assert "Setting a already exists. Overwrite? [y/N]" in run.stderr
    assert "Exiting without modifying keystore." in run.stdout
    assert tool.keystore.read_bytes() == before
    assert tool("add-file", "--force", "a", path, stdin=None).code == 0
    assert tool.settings()["a"] == b"new"


def test_add_file_names_and_paths_must_come_in_pairs(tool: Tool) -> None:
    before = tool.write()
    run = tool("add-file", "-f", "a", str(tool.value("a", b"x")), "b")
    assert run.code == 64
    assert "Commands\n--------" in run.stderr
    assert run.stderr.endswith(_error("settings and filenames must come in pairs", 64))
    assert tool("add-file", "-f").stderr.endswith(_error("Missing setting name", 64))
    assert tool.keystore.read_bytes() == before


def test_add_file_with_a_missing_file_changes_nothing(tool: Tool) -> None:
    before = tool.write()
    run = tool("add-file", "-f", "a", str(tool.value("a", b"x")), "b", "/nonexistent/b")
    assert run.code == 74
    assert run.stderr == _error("File [/nonexistent/b] does not exist", 74)
    assert tool.keystore.read_bytes() == before


def test_add_file_with_a_bad_name_is_an_unexpected_error(tool: Tool) -> None:
    before = tool.write()
    path = str(tool.value("a", b"x"))
    run = tool("add-file", "-f", "good", path, "bad name", path)
    # Not a UserException in the real tool: a stack trace, no ERROR line.
    assert run.code == 70
    assert f"java.lang.IllegalArgumentException: {BAD_NAME}" in run.stderr
    assert "ERROR:" not in run.stderr
    assert tool.keystore.read_bytes() == before
    tool.extra_env["STANDIN_KEYSTORE_VERSION"] = "7.17.22"
    tool.write()  # a 7.17 tool cannot read the 8.15 format
    run = tool("add-file", "-f", "bad name", path)
    assert run.code == 1
    assert 'Exception in thread "main" java.lang.IllegalArgumentException' in run.stderr


def test_add_file_paths_are_relative_to_the_config_folder_not_the_caller(tool: Tool) -> None:
    tool.write()
    (tool.conf.parent / "mine").write_bytes(b"caller's")
    run = tool("add-file", "-f", "a", "mine", cwd=tool.conf.parent)
    assert run.code == 74 and "File [mine] does not exist" in run.stderr
    (tool.conf / "theirs").write_bytes(b"conf's")
    assert tool("add-file", "-f", "a", "theirs").code == 0
    assert tool.settings()["a"] == b"conf's"


def test_remove_takes_several_names_and_is_all_or_nothing(tool: Tool) -> None:
    before = tool.write(a=b"1", b=b"2")
    run = tool("remove", "a", "nope")
    assert run == Run(78, "", _error("Setting [nope] does not exist in the keystore.", 78))
    assert tool.keystore.read_bytes() == before
    run = tool("remove")
    assert run.code == 64
    assert run.stderr.endswith(_error("Must supply at least one setting to remove", 64))
    assert tool("remove", "a", "b") == Run(0, "", "")
    assert list(tool.settings()) == ["keystore.seed"]


def test_add_reads_one_value_per_stdin_line(tool: Tool) -> None:
    tool.write(a=b"old")
    assert tool("add", "-fx", "a", "b", stdin=b"one\r\ntwo\n").code == 0
    assert tool.settings()["a"] == b"one" and tool.settings()["b"] == b"two"
    run = tool("add", "-x", "bad name", stdin=b"v\n")
    assert run == Run(65, "", _error(BAD_NAME, 65))
    run = tool("add", "-x")
    assert run.code == 64 and run.stderr.endswith(_error("the setting names can not be empty", 64))


def test_usage_errors_exit_64(tool: Tool) -> None:
    assert tool().stderr.endswith(_error("Missing command", 64))
    run = tool("frobnicate")
    assert run.code == 64 and run.stderr.endswith(_error("Unknown command [frobnicate]", 64))
    # jopt-simple's own errors carry no exit code suffix and no empty line before them.
    run = tool("list", "-q")
    assert run.code == 64 and run.stderr.endswith("\nERROR: q is not a recognized option\n")
    path = str(tool.value("a", b"x"))
    run = tool("add-file", "-f", "-dash", path)
    assert run.code == 64 and run.stderr.endswith("ERROR: d is not a recognized option\n")
    assert tool("add-file", "-f", "--", "-dash", path).code == 0
    assert tool.settings()["-dash"] == b"x"


def test_help_and_silent(tool: Tool) -> None:
    run = tool("add-file", "-h")
    assert run.code == 0
    assert "Add a file setting to the keystore" in run.stdout and "-f, --force" in run.stdout
    # -s hides normal output, list's names included, but never the ERROR line.
    assert tool("list", "-s").stderr == f"ERROR: {NOT_FOUND.format(tool.keystore)}, with exit code 65\n"
    tool.write()
    assert tool("list", "--silent") == Run(0, "", "")


def test_a_leftover_tmp_file_makes_every_write_fail(tool: Tool) -> None:
    before = tool.write()
    tool.tmp.write_bytes(b"another writer")
    run = tool("add-file", "-f", "a", str(tool.value("a", b"x")))
    assert run.code == 74
    assert f"java.nio.file.FileAlreadyExistsException: {tool.tmp}" in run.stderr
    assert tool.keystore.read_bytes() == before
    assert tool.tmp.read_bytes() == b"another writer"


def test_a_6x_tool_takes_one_pair_per_run(tool: Tool) -> None:
    tool.extra_env["STANDIN_KEYSTORE_VERSION"] = "6.8.23"
    before = tool.write()
    a, b = str(tool.value("a", b"1")), str(tool.value("b", b"2"))
    run = tool("add-file", "-f", "a", a, "b", b)
    assert run.code == 64
    # Before 8.10 the ERROR line has no exit code suffix.
    assert run.stderr.endswith(f"\nERROR: Unrecognized extra arguments [b, {b}] after filepath\n")
    assert tool.keystore.read_bytes() == before
    assert tool("add-file", "-f", "a", a).code == 0
    assert tool("add-file", "-f", "b", b).code == 0
    assert tool.settings()["b"] == b"2"


def test_before_8_10_errors_have_no_exit_code_suffix(tool: Tool) -> None:
    run = tool("list", STANDIN_KEYSTORE_VERSION="8.9.2")
    assert run == Run(65, "", f"\nERROR: {NOT_FOUND.format(tool.keystore)}\n")


def test_delay_simulates_jvm_start(tool: Tool) -> None:
    started = time.monotonic()
    assert tool("create", STANDIN_KEYSTORE_DELAY="0.5").code == 0
    assert time.monotonic() - started >= 0.5


def test_log_records_every_invocation_without_values(tool: Tool, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    path = str(tool.value("a", b"secret-value"))
    tool("create", STANDIN_KEYSTORE_LOG=str(log))
    tool("add-file", "-f", "a", path, STANDIN_KEYSTORE_LOG=str(log))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == [
        {"argv": ["create"], "es_path_conf": str(tool.conf), "cwd": str(tool.conf.parent)},
        {"argv": ["add-file", "-f", "a", path], "es_path_conf": str(tool.conf), "cwd": str(tool.conf.parent)},
    ]
    assert "secret-value" not in log.read_text()


def test_fail_exits_with_the_code_and_writes_nothing(tool: Tool) -> None:
    run = tool("create", STANDIN_KEYSTORE_FAIL="75")
    assert run == Run(75, "", "\nERROR: simulated failure, with exit code 75\n")
    assert not tool.keystore.exists()


def test_hang_never_ends_on_its_own(tool: Tool) -> None:
    process = subprocess.Popen(
        tool.command("list"), env=tool.env(STANDIN_KEYSTORE_HANG="1"), stdin=subprocess.DEVNULL
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)
    finally:
        process.kill()
        process.wait()


def test_garbage_leaves_a_half_written_tmp_file(tool: Tool) -> None:
    before = tool.write()
    run = tool("add-file", "-f", "a", str(tool.value("a", b"x")), STANDIN_KEYSTORE_GARBAGE="1")
    assert run.code == 70 and "simulated crash" in run.stderr
    assert tool.tmp.exists() and tool.keystore.read_bytes() == before
    assert tool("add-file", "-f", "a", str(tool.value("a", b"x"))).code == 74


def test_a_stderr_warning_is_no_failure(tool: Tool) -> None:
    tool.write()
    run = tool("list", STANDIN_KEYSTORE_STDERR_WARNING="1")
    assert (run.code, run.stdout) == (0, "keystore.seed\n")
    assert run.stderr.startswith("OpenJDK 64-Bit Server VM warning:")


def test_the_keystore_lives_in_es_path_conf_or_es_home_config(tool: Tool, tmp_path: Path) -> None:
    run = tool("list", ES_PATH_CONF="")
    assert run.code == 78 and "ERROR: neither ES_PATH_CONF nor ES_HOME is set" in run.stderr
    missing = tmp_path / "absent"
    run = tool("create", ES_PATH_CONF=str(missing))
    assert run.code == 78 and not missing.exists()
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    assert tool("create", ES_PATH_CONF="", ES_HOME=str(home)).code == 0
    assert (home / "config" / "elasticsearch.keystore").exists()
    assert not tool.keystore.exists()


def test_a_corrupted_keystore_is_a_data_error(tool: Tool) -> None:
    tool.keystore.write_bytes(b"\x3f\xd7\x6c\x17 not a keystore")
    assert tool("list") == Run(65, "", _error("Keystore has been corrupted or tampered with", 65))


def test_has_passwd_fails_for_a_keystore_without_password(tool: Tool) -> None:
    tool.write()
    assert tool("has-passwd") == Run(1, "", "ERROR: Keystore is not password-protected\n")


# --- Elasticsearch -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EsLauncher]:
    """Module-wide: the servers of es8 and es9 serve every test of the module."""
    launcher = EsLauncher(tmp_path_factory.mktemp("es"), pki)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def es8_server(launcher: EsLauncher) -> Es:
    return launcher(version="8.15.0")


@pytest.fixture(scope="module")
def es9_server(launcher: EsLauncher) -> Es:
    return launcher(version="9.3.0")


@pytest.fixture
def es8(es8_server: Es) -> Es:
    es8_server.mode("ok")
    # Format 5, as an 8.15 node keeps a keystore last saved by 8.12: it reads it as it is. These
    # tests are about the answers, not about 210,000 PBKDF2 rounds here and again in the node.
    es8_server.keystore.write_bytes(encode_keystore({"keystore.seed": b"x" * 20}, version="8.12.1"))
    return es8_server


@pytest.fixture
def es9(es9_server: Es) -> Es:
    es9_server.mode("ok")
    es9_server.keystore.write_bytes(encode_keystore({"keystore.seed": b"x" * 20, "a": b"1"}))
    return es9_server


RELOAD = "/_nodes/_local/reload_secure_settings"


def test_root_answers_over_tls_with_the_product_header(es8: Es) -> None:
    answer = es8.request("GET", "/")
    assert answer.status == 200
    assert answer.headers["X-Elastic-Product"] == "Elasticsearch"
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.body
    assert set(body) == {"name", "cluster_name", "cluster_uuid", "version", "tagline"}
    assert body["tagline"] == "You Know, for Search"
    assert body["version"]["number"] == "8.15.0"
    assert body["version"]["build_flavor"] == "default"
    assert "lucene_version" in body["version"]
    head = es8.request("HEAD", "/")
    assert head.status == 200 and head.body is None


def test_wrong_or_missing_credentials_answer_401(es8: Es) -> None:
    before = es8.stats()["unauthorized"]
    wrong = es8.request("POST", RELOAD, auth=(USER, "nope"))
    assert wrong.status == 401
    assert (wrong.headers.get_all("WWW-Authenticate") or [])[0] == 'Basic realm="security" charset="UTF-8"'
    assert "X-Elastic-Product" not in wrong.headers
    reason = f"unable to authenticate user [{USER}] for REST request [{RELOAD}]"
    assert wrong.body["status"] == 401
    assert wrong.body["error"]["type"] == "security_exception"
    assert wrong.body["error"]["reason"] == reason
    assert wrong.body["error"]["root_cause"][0]["reason"] == reason
    missing = es8.request("GET", "/", auth=None)
    assert missing.status == 401
    assert missing.body["error"]["reason"] == "missing authentication credentials for REST request [/]"
    assert es8.stats()["unauthorized"] == before + 2


def test_reload_on_8x_names_the_node_and_counts_the_call(es8: Es) -> None:
    before = es8.stats()
    body = json.dumps({"secure_settings_password": ""}).encode()
    answer = es8.request("POST", RELOAD + "?timeout=30s", body)
    assert answer.status == 200
    assert answer.body["_nodes"] == {"total": 1, "successful": 1, "failed": 0}
    assert answer.body["cluster_name"] == "docker-cluster"
    [(node_id, node)] = answer.body["nodes"].items()
    assert node == {"name": "standin-node"}
    assert len(node_id) == 22
    assert es8.request("POST", "/_nodes/reload_secure_settings").status == 200
    stats = es8.stats()
    assert stats["reload"] == before["reload"] + 2
    assert stats["reload_bodies"][-2:] == [{"secure_settings_password": ""}, None]
    assert stats["reload_paths"][-2:] == [RELOAD + "?timeout=30s", "/_nodes/reload_secure_settings"]


def test_reload_on_9_3_reports_the_digest_of_the_file_the_tool_wrote(es9: Es, tmp_path: Path) -> None:
    answer = es9.request("POST", RELOAD)
    [node] = answer.body["nodes"].values()
    assert node["keystore_digest"] == hashlib.sha256(es9.keystore.read_bytes()).hexdigest()
    assert node["secure_setting_names"] == ["a", "keystore.seed"]
    assert node["keystore_path"] == str(es9.keystore)
    assert node["keystore_last_modified_time"].endswith("Z")
    value = tmp_path / "value"
    value.write_bytes(b"new")
    tool = Tool(es9.folder)
    assert tool("add-file", "-f", "b", str(value)).code == 0
    [node] = es9.request("POST", RELOAD).body["nodes"].values()
    assert node["keystore_digest"] == hashlib.sha256(es9.keystore.read_bytes()).hexdigest()
    assert node["secure_setting_names"] == ["a", "b", "keystore.seed"]


def test_reload_failures_of_a_node_are_reload_exceptions_in_a_200(es9: Es) -> None:
    es9.keystore.unlink()
    answer = es9.request("POST", RELOAD)
    assert answer.status == 200 and answer.body["_nodes"]["failed"] == 0
    [node] = answer.body["nodes"].values()
    assert node["reload_exception"] == {"type": "illegal_state_exception", "reason": "Keystore is missing"}
    assert "keystore_digest" not in node
    es9.keystore.write_bytes(encode_keystore({}))
    body = json.dumps({"secure_settings_password": "wrong"}).encode()
    [node] = es9.request("POST", RELOAD, body).body["nodes"].values()
    assert node["reload_exception"]["reason"] == "Provided keystore password was incorrect"


def test_reload_for_another_node_reloads_nothing(es8: Es) -> None:
    answer = es8.request("POST", "/_nodes/some-other-node/reload_secure_settings")
    assert answer.status == 200
    assert answer.body["_nodes"] == {"total": 0, "successful": 0, "failed": 0}
    assert answer.body["nodes"] == {}


def test_mode_unavailable_answers_503(es8: Es) -> None:
    es8.mode("unavailable")
    root = es8.request("GET", "/")
    assert root.status == 503 and root.body["tagline"] == "You Know, for Search"
    reload = es8.request("POST", RELOAD)
    assert reload.status == 503
    assert reload.body["error"]["type"] == "master_not_discovered_exception"


def test_mode_reload_500(es8: Es) -> None:
    es8.mode("reload-500")
    assert es8.request("GET", "/").status == 200
    answer = es8.request("POST", RELOAD)
    assert answer.status == 500 and answer.body["status"] == 500


def test_mode_reload_exception(es8: Es) -> None:
    es8.mode("reload-exception")
    answer = es8.request("POST", RELOAD)
    assert answer.status == 200 and answer.body["_nodes"]["failed"] == 0
    [node] = answer.body["nodes"].values()
    assert node["reload_exception"]["type"] == "security_exception"


def test_mode_node_failed(es8: Es) -> None:
    es8.mode("node-failed")
    answer = es8.request("POST", RELOAD)
    assert answer.status == 200
    nodes = answer.body["_nodes"]
    assert (nodes["total"], nodes["successful"], nodes["failed"]) == (1, 0, 1)
    assert nodes["failures"][0]["type"] == "failed_node_exception"
    assert answer.body["nodes"] == {}


def test_mode_wrong_digest(es9: Es) -> None:
    es9.mode("wrong-digest")
    [node] = es9.request("POST", RELOAD).body["nodes"].values()
    assert node["keystore_digest"] != hashlib.sha256(es9.keystore.read_bytes()).hexdigest()
    assert "reload_exception" not in node


def test_mode_forbidden(es8: Es) -> None:
    es8.mode("forbidden")
    assert es8.request("GET", "/").status == 200
    answer = es8.request("POST", RELOAD)
    assert answer.status == 403
    assert answer.body["error"]["type"] == "security_exception"
    assert f"is unauthorized for user [{USER}]" in answer.body["error"]["reason"]
    es8.mode("forbidden-all")
    assert es8.request("GET", "/").status == 403


def test_mode_slow(es8: Es) -> None:
    es8.mode("slow 0.4")
    started = time.monotonic()
    assert es8.request("GET", "/").status == 200
    assert time.monotonic() - started >= 0.4


def test_an_unknown_mode_is_a_500_not_ok(es8: Es) -> None:
    es8.mode("sideways")
    answer = es8.request("GET", "/")
    assert answer.status == 500 and "sideways" in answer.body["error"]["reason"]


def test_requests_the_real_node_refuses(es8: Es) -> None:
    wrong_method = es8.request("GET", RELOAD)
    assert wrong_method.status == 405
    assert wrong_method.body["error"] == (
        f"Incorrect HTTP method for uri [{RELOAD}] and method [GET], allowed: [POST]"
    )
    double_slash = es8.request("POST", "//_nodes/reload_secure_settings")
    assert double_slash.status == 400
    assert double_slash.body["error"].startswith("no handler found for uri")
    assert es8.request("GET", "/some-index").body["error"]["type"] == "index_not_found_exception"
    assert es8.request("POST", RELOAD + "?master_timeout=1s").status == 400
    assert es8.request("POST", RELOAD + "?timeout=soon").status == 400
    no_type = es8.request("POST", RELOAD, b"{}", headers={"Content-Type": "text/plain"})
    assert no_type.status == 406
    unknown_field = es8.request("POST", RELOAD, json.dumps({"password": "x"}).encode())
    assert unknown_field.status == 400
    assert unknown_field.body["error"]["type"] == "x_content_parse_exception"


def test_ready_after_refuses_connections_then_listens(launcher: EsLauncher) -> None:
    started = time.monotonic()
    es = launcher("--ready-after", "0.6", start=False).start(wait=False)
    port = es.port
    time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert es.wait_listening() == port
    assert time.monotonic() - started >= 0.6
    assert es.request("GET", "/").status == 200


def test_plain_http_without_auth_imitating_6x(launcher: EsLauncher) -> None:
    es = launcher(version="6.8.23", tls=False, auth=False)
    answer = es.request("GET", "/", auth=None)
    assert answer.status == 200 and answer.body["version"]["number"] == "6.8.23"
    # The product header came with 7.14.
    assert "X-Elastic-Product" not in answer.headers
    assert es.stats()["root"] == 1
