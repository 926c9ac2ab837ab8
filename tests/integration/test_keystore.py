"""The keystore updater end to end: a real espm process, the stand-in tool, the stand-in Elasticsearch.

The Secret folder is laid out and updated as the kubelet does it (see tests/keystore_fixtures.py);
the tool is a wrapper script running the strict stand-in `elasticsearch-keystore`, whose
invocation log (STANDIN_KEYSTORE_LOG) says how many runs an update took and with which arguments.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from espm.standins.keystore_tool import parse_keystore
from tests.conftest import descendants, wait_for
from tests.keystore_fixtures import (
    CHILD,
    KEYSTORE,
    PRINT_NAMES,
    WORK_PREFIX,
    KeystoreSetup,
    b64,
    pairs_of,
    reload_env,
    shm_files_holding,
    start,
    status,
    wait_state,
    wait_status,
)
from tests.standin_es import ES_PASSWORD, EsLauncher, Pki

PROBE = ["espm.probe.first", "espm.probe.second"]
FAILED_UPDATE = "Failed to update keystore: "
FAILED_RELOAD = "Failed to reload secure settings: "
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
def ks(tmp_path: Path) -> KeystoreSetup:
    return KeystoreSetup(tmp_path)


def inotify_watches(pid: int) -> set[int]:
    """Inode numbers watched by the inotify descriptors of `pid`."""
    inodes: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    match = re.match(r"inotify wd:\S+ ino:([0-9a-f]+)", line)
                    if match:
                        inodes.add(int(match.group(1), 16))
        except OSError:
            continue
    return inodes


def beside_keystore(ks: KeystoreSetup) -> set[str]:
    return {p.name for p in ks.conf.iterdir()}


# --- the initial build -----------------------------------------------------------------------


def test_the_child_starts_with_the_keystore_already_built(espm: Any, ks: KeystoreSetup) -> None:
    ks.prepare_foreign_keystore()
    values = {"s3.client.default.access_key": b"AKIA-initial-value", "binary.value": b"\x00\xff\n\r\n"}
    ks.secrets.write(values)
    # A slow tool: were the build not done before the child starts, the child would see it missing.
    manager = espm([*PRINT_NAMES, str(ks.keystore)], env=ks.env(STANDIN_KEYSTORE_DELAY="0.3"))
    seen = dict(item.split("=") for item in manager.readline(timeout=10).split())
    assert sorted(seen) == sorted([*values, "bootstrap.password", "keystore.seed"])
    for name, value in values.items():
        assert bytes.fromhex(seen[name]) == value
    manager.wait_api()
    runs = ks.runs()
    assert len(runs) == 1 and pairs_of(runs[0]) == sorted(values)
    doc = status(manager)
    assert doc["state"] == "running" and doc["reason"] == "Keystore updated"
    assert doc["settings"] == sorted(values) and doc["updates"] == 1 and doc["reloads"] == 0


# --- updates through the watch ---------------------------------------------------------------


def test_a_data_swap_reaches_the_keystore_through_inotify_well_under_a_second(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "one"})
    manager = start(espm, ks.env())
    assert os.stat(ks.secrets.path).st_ino in inotify_watches(manager.pid)
    # A first swap (the manager also looks once when its watch starts; this one is past that).
    ks.secrets.write({"a": "two"})
    wait_status(manager, lambda s: s["updates"] == 2)
    started = time.monotonic()
    ks.secrets.write({"a": "three", "b": "new"})
    wait_for(lambda: ks.settings().get("a") == b"three" and ks.settings().get("b") == b"new", timeout=5)
    elapsed = time.monotonic() - started
    assert elapsed < 0.8, f"the update took {elapsed:.2f}s"
    assert [pairs_of(run) for run in ks.runs()] == [["a"], ["a"], ["a", "b"]]
    doc = wait_status(manager, lambda s: s["updates"] == 3)
    assert doc["settings"] == ["a", "b"] and doc["state"] == "running"


def test_a_removed_secret_is_removed_and_foreign_entries_survive(espm: Any, ks: KeystoreSetup) -> None:
    ks.prepare_foreign_keystore()
    foreign = {k: v for k, v in ks.settings().items()}
    ks.secrets.write({"keep": "keep-value-77", "gone": "gone-value-77", "also.gone": "also-value-77"})
    manager = start(espm, ks.env())
    assert json.loads(ks.managed.read_text()) == ["also.gone", "gone", "keep"]
    runs = len(ks.runs())
    ks.secrets.write({"keep": "keep-value-77"})
    wait_status(manager, lambda s: s["updates"] == 2)
    # Only the stale names, in one run; the unchanged setting is not written again.
    assert ks.runs()[runs:] == [["remove", "--", "also.gone", "gone"]]
    assert ks.settings() == {**foreign, "keep": b"keep-value-77"}
    assert status(manager)["settings"] == ["keep"]
    # The record of managed names: names only, never values.
    text = ks.managed.read_text()
    assert json.loads(text) == ["keep"]
    assert "value-77" not in text


def test_a_secret_removed_while_the_manager_was_down_is_removed_at_the_next_start(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.prepare_foreign_keystore()
    ks.secrets.write({"a": "1", "b": "2"})
    first = start(espm, ks.env())
    first.signal(signal.SIGTERM)
    first.wait()
    ks.secrets.write({"a": "1"})
    start(espm, ks.env())
    assert sorted(ks.settings()) == ["a", "bootstrap.password", "keystore.seed"]
    assert ks.runs()[-1] == ["remove", "--", "b"]


def test_the_keystore_keeps_its_mode(espm: Any, ks: KeystoreSetup) -> None:
    ks.prepare_foreign_keystore()
    ks.keystore.chmod(0o640)
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env())
    assert stat.S_IMODE(ks.keystore.stat().st_mode) == 0o640
    inode = ks.keystore.stat().st_ino
    ks.secrets.write({"a": "2"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert ks.settings()["a"] == b"2"
    assert ks.keystore.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert stat.S_IMODE(ks.keystore.stat().st_mode) == 0o640
    assert ks.keystore.stat().st_uid == os.getuid()


def test_no_tool_run_when_nothing_really_changed(espm: Any, ks: KeystoreSetup) -> None:
    values = {"a": "alpha", "b": "beta"}
    ks.secrets.write(values)
    manager = start(espm, ks.env())
    runs = ks.runs()
    before = ks.keystore.read_bytes()
    mtime = ks.keystore.stat().st_mtime_ns
    ks.secrets.write(values)  # the same content swapped in again
    ks.secrets.touch()
    (ks.secrets.path / ".hidden").write_text("kubelet bookkeeping")
    time.sleep(0.6)  # several debounce periods: long enough for a (wrong) update to run
    assert ks.runs() == runs
    assert ks.keystore.read_bytes() == before and ks.keystore.stat().st_mtime_ns == mtime
    assert status(manager)["updates"] == 1
    # The watch is still alive: a real change makes exactly one run, for the changed setting.
    ks.secrets.write({**values, "b": "beta-2"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert [pairs_of(run) for run in ks.runs()[len(runs) :]] == [["b"]]


# --- as few runs as the tool allows ----------------------------------------------------------


def test_fifty_secrets_are_added_in_one_run(espm: Any, ks: KeystoreSetup) -> None:
    values = {f"setting.n{i:02d}": f"value-{i}-\n-{i}" for i in range(50)}
    ks.secrets.write(values)
    manager = start(espm, ks.env())
    runs = ks.runs()
    assert len(runs) == 1
    assert pairs_of(runs[0]) == sorted(values)
    settings = ks.settings()
    assert {n: settings[n] for n in values} == {n: v.encode() for n, v in values.items()}
    assert status(manager)["settings"] == sorted(values)


def test_stale_names_are_removed_in_one_run(espm: Any, ks: KeystoreSetup) -> None:
    values = {f"setting.n{i:02d}": f"value-{i}" for i in range(50)}
    ks.secrets.write(values)
    manager = start(espm, ks.env())
    kept = {n: v for n, v in values.items() if int(n[-2:]) % 3 == 0}
    changed = {**kept, "setting.n00": "changed", "setting.n99": "added"}
    ks.secrets.write(changed)
    wait_status(manager, lambda s: s["updates"] == 2)
    runs = ks.runs()[1:]
    assert len(runs) == 2, runs
    assert pairs_of(runs[0]) == ["setting.n00", "setting.n99"]
    assert runs[1] == ["remove", "--", *sorted(set(values) - set(changed))]
    assert {n: v for n, v in ks.settings().items() if n != "keystore.seed"} == {
        n: v.encode() for n, v in changed.items()
    }


def test_a_6x_tool_with_its_version_given_takes_one_pair_per_run(espm: Any, ks: KeystoreSetup) -> None:
    ks.secrets.write({"a": "1", "b": "2", "c": "3"})
    env = ks.env(STANDIN_KEYSTORE_VERSION="6.8.0", KEYSTORE_ES_VERSION="6.8.0")
    manager = start(espm, env)
    assert [pairs_of(run) for run in ks.runs()] == [["a"], ["b"], ["c"]]
    assert ks.settings() | {"keystore.seed": b""} == {"keystore.seed": b"", "a": b"1", "b": b"2", "c": b"3"}
    assert status(manager)["state"] == "running"


def test_a_6x_tool_refusing_a_batch_is_run_one_pair_at_a_time_from_then_on(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "1", "b": "2", "c": "3"})
    manager = start(espm, ks.env(STANDIN_KEYSTORE_VERSION="6.8.0"))
    # The batched run is refused as a usage error (64); a probe with fixed names in a scratch
    # folder confirms it is the tool, not the input; then one pair per run.
    runs = ks.runs()
    assert [pairs_of(run) for run in runs] == [["a", "b", "c"], PROBE, ["a"], ["b"], ["c"]]
    manager.wait_log("one setting per run")
    assert ks.settings() | {"keystore.seed": b""} == {"keystore.seed": b"", "a": b"1", "b": b"2", "c": b"3"}
    doc = status(manager)
    assert (doc["state"], doc["reason"], doc["updates"]) == ("running", "Keystore updated", 1)
    # Remembered: the next update goes one pair per run at once.
    ks.secrets.write({"a": "10", "b": "20", "c": "3"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert [pairs_of(run) for run in ks.runs()[5:]] == [["a"], ["b"]]
    assert ks.settings()["a"] == b"10" and ks.settings()["b"] == b"20"


# --- names and status ------------------------------------------------------------------------


def test_invalid_names_are_left_out_and_listed(espm: Any, ks: KeystoreSetup) -> None:
    ks.secrets.write({"good": "g", "bad name": "b1", "bad*star": "b2", "ünïcode": "b3"})
    manager = start(espm, ks.env())
    assert pairs_of(ks.runs()[0]) == ["good"]
    assert sorted(ks.settings()) == ["good", "keystore.seed"]
    doc = status(manager)
    assert doc["settings"] == ["good"]
    assert doc["invalid_settings"] == sorted(["bad name", "bad*star", "ünïcode"])
    assert doc["state"] == "running"
    manager.wait_log(r"bad name")
    # Fixed in the Secret: the list empties.
    ks.secrets.write({"good": "g", "bad_name": "b1"})
    doc = wait_status(manager, lambda s: s["updates"] == 2)
    assert doc["invalid_settings"] == [] and doc["settings"] == ["bad_name", "good"]


OPTION_LIKE = ["--force", "--help", "-v", "-x"]


def test_option_like_names_are_left_out_and_never_reach_the_tool(espm: Any, ks: KeystoreSetup) -> None:
    options = {name: f"option-value-{i}" for i, name in enumerate(OPTION_LIKE)}
    ks.secrets.write({**options, "a": "1", "b": "2"})
    manager = start(espm, ks.env())
    doc = status(manager)
    assert (doc["state"], doc["reason"]) == ("running", "Keystore updated")
    assert doc["invalid_settings"] == OPTION_LIKE and doc["settings"] == ["a", "b"]
    assert [pairs_of(run) for run in ks.runs()] == [["a", "b"]]
    assert sorted(ks.settings()) == ["a", "b", "keystore.seed"]
    assert json.loads(ks.managed.read_text()) == ["a", "b"]
    # Ten new settings: still one run (no "6.x tool" was learned from a usage error), and one remove.
    ten = {f"n{i}": str(i) for i in range(10)}
    ks.secrets.write({**options, **ten})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert [pairs_of(run) for run in ks.runs()[1:2]] == [sorted(ten)]
    assert ks.runs()[2:] == [["remove", "--", "a", "b"]]
    assert sorted(ks.settings()) == sorted([*ten, "keystore.seed"])


def test_option_like_names_recorded_by_an_older_espm_do_not_block_updates(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.prepare_foreign_keystore()
    ks.managed.write_text(json.dumps(["--force", "-x", "a"]) + "\n")
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env())
    doc = status(manager)
    assert (doc["state"], doc["reason"]) == ("running", "Keystore updated"), doc
    assert ["remove", "--", "--force", "-x"] in ks.runs()  # `--`: read as names, found absent
    assert json.loads(ks.managed.read_text()) == ["a"]
    ks.secrets.write({"a": "2"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert ks.settings()["a"] == b"2" and status(manager)["state"] == "running"


def test_a_usage_error_caused_by_the_input_teaches_nothing_about_the_tool(
    espm: Any, ks: KeystoreSetup
) -> None:
    # This tool refuses to add `bad.input` with a usage error (64), as some input could make it.
    ks.set_tool_env('case " $* " in " add-file "*" bad.input "*) export STANDIN_KEYSTORE_FAIL=64;; esac')
    ks.secrets.write({"a": "1", "b": "2", "bad.input": "3"})
    manager = start(espm, ks.env())
    doc = status(manager)
    assert doc["state"] == "failed" and "exited with status 64" in doc["reason"], doc
    # A probe with fixed names showed the tool takes batches: the refusal was the input's.
    assert [pairs_of(run) for run in ks.runs()[:2]] == [["a", "b", "bad.input"], PROBE]
    ks.secrets.write({"a": "1", "b": "2", "c": "3"})
    wait_state(manager, "running", "Keystore updated")
    runs = [run for run in ks.runs() if run[0] == "add-file"]
    assert pairs_of(runs[-1]) == ["a", "b", "c"]
    assert all(len(pairs_of(run)) > 1 for run in runs), runs  # never one setting per run
    assert not [r for r in manager.read_logs() if "one setting per run" in str(r.get("message"))]


def test_a_link_to_a_file_outside_the_secret_folder_is_never_read(
    espm: Any, ks: KeystoreSetup, tmp_path: Path
) -> None:
    outside = tmp_path / "shadow"
    outside.write_text("root:SV-outside-Hx:19000:0:99999:7:::\n")
    ks.secrets.write({"a": "1"})
    # Inside the folder `..data` points to, where the settings are read from.
    (ks.secrets.path / "..data" / "stolen").symlink_to(outside)
    (ks.secrets.path / "..data" / "alias").symlink_to("a")  # a link that stays inside is read
    manager = start(espm, ks.env())
    doc = status(manager)
    assert doc["invalid_settings"] == ["stolen"] and doc["settings"] == ["a", "alias"]
    assert ks.settings()["alias"] == b"1" and "stolen" not in ks.settings()
    assert not [v for v in ks.settings().values() if b"SV-outside-Hx" in v]
    record = manager.wait_log("'stolen' left out")
    assert "outside" in record["message"]


def test_status_fields(espm: Any, ks: KeystoreSetup) -> None:
    ks.secrets.write({"b": "1", "a": "2"})
    manager = start(espm, ks.env())
    doc = status(manager)
    assert set(doc) == {
        "state",
        "reason",
        "at",
        "settings",
        "invalid_settings",
        "updates",
        "reloads",
        "writer",
    }
    assert doc["writer"] == "tool"
    assert doc["state"] == "running" and doc["reason"] == "Keystore updated"
    assert RFC3339.fullmatch(doc["at"]), doc["at"]
    at = time.mktime(time.strptime(doc["at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(at - time.time()) < 30
    assert doc["settings"] == ["a", "b"] and doc["invalid_settings"] == []
    assert (doc["updates"], doc["reloads"]) == (1, 0)
    _, _, answer = manager.request("GET", "/keystore/status")
    assert answer.headers["Content-Type"].startswith("application/json")


def test_keystore_status_is_404_when_the_updater_is_off(espm: Any, ks: KeystoreSetup) -> None:
    manager = espm(CHILD, env=ks.env(PM_KEYSTORE_UPDATER="false"))
    manager.wait_api()
    code, doc, _ = manager.request("GET", "/keystore/status")
    assert code == 404 and "error" in doc
    assert ks.runs() == []


# --- failures of the tool --------------------------------------------------------------------


def test_a_failing_tool_fails_the_initial_build_and_the_child_still_starts(
    espm: Any, ks: KeystoreSetup
) -> None:
    before = ks.prepare_foreign_keystore()
    ks.secrets.write({"a": "1"})
    # The manager's environment reaches the tool.
    manager = start(espm, ks.env(STANDIN_KEYSTORE_FAIL="74"))
    assert manager.status()["state"] == "started"
    doc = status(manager)
    assert doc["state"] == "failed"
    assert doc["reason"].startswith(FAILED_UPDATE)
    assert "exited with status 74" in doc["reason"]
    assert "ERROR: simulated failure, with exit code 74" in doc["reason"]
    assert doc["updates"] == 0
    assert ks.keystore.read_bytes() == before
    assert beside_keystore(ks) == {KEYSTORE, KEYSTORE + ".managed"}
    assert json.loads(ks.managed.read_text()) == ["a"]


FAILURES = {
    "exit-74": ("export STANDIN_KEYSTORE_FAIL=74", ["exited with status 74", "ERROR: simulated failure"]),
    "garbage": (
        "export STANDIN_KEYSTORE_GARBAGE=1",
        ["exited with status 70", "java.lang.IllegalStateException: simulated crash"],
    ),
    # A hung JVM with something it started in the background: the whole group is killed.
    "hang": ("export STANDIN_KEYSTORE_HANG=1\nsleep 300 &", ["did not finish in time and was killed"]),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failed_update_leaves_the_old_keystore_and_nothing_else(
    espm: Any, ks: KeystoreSetup, failure: str
) -> None:
    ks.prepare_foreign_keystore()
    ks.secrets.write({"a": "old-a"})
    manager = start(espm, ks.env(KEYSTORE_TOOL_TIMEOUT="1"))
    child = manager.status()["pid"]
    before = ks.keystore.read_bytes()
    runs = len(ks.runs())
    shell, expected = FAILURES[failure]
    ks.set_tool_env(shell)
    ks.secrets.write({"b": "new-b"})
    doc = wait_state(manager, "failed", timeout=10)
    assert doc["reason"].startswith(FAILED_UPDATE), doc["reason"]
    for text in expected:
        assert text in doc["reason"]
    assert doc["settings"] == ["a"] and doc["updates"] == 1
    assert ks.keystore.read_bytes() == before
    # The record may name what the failed update meant to add (never values): a superset is safe.
    assert json.loads(ks.managed.read_text()) == ["a", "b"]
    # Nothing of the failed update is left beside the keystore: not its work folder (the tool's
    # ES_PATH_CONF in the log), nor anything else. Only the work folder of its retry may be there,
    # when the test is slower than the 2 s backoff (a loaded machine did it once in 7 runs).
    left = beside_keystore(ks) - {KEYSTORE, KEYSTORE + ".managed"}
    used = ks.run_folders()[: runs + 1]  # the initial build's and the failed update's
    assert used[-1].startswith(WORK_PREFIX) and not left & set(used), (used, left)
    assert all(name.startswith(WORK_PREFIX) for name in left), left
    # No tool process left behind: only the managed child is below the manager.
    wait_for(lambda: descendants(manager.proc.pid) == [child], timeout=5)
    manager.wait_log("keystore updater failed")


def test_a_failed_update_is_retried_after_a_backoff(espm: Any, ks: KeystoreSetup) -> None:
    ks.secrets.write({"a": "1"})
    ks.set_tool_env("export STANDIN_KEYSTORE_FAIL=74")
    manager = start(espm, ks.env())
    failed_at = time.monotonic()
    assert status(manager)["state"] == "failed"
    ks.set_tool_env(None)
    doc = wait_state(manager, "running", "Keystore updated", timeout=8)
    elapsed = time.monotonic() - failed_at
    assert 1.0 < elapsed < 6, f"retried after {elapsed:.2f}s"
    assert doc["updates"] == 1 and ks.settings()["a"] == b"1"
    assert len(ks.runs()) == 2  # one failed run, one retry: no busy loop


def test_a_failed_update_is_retried_at_once_when_the_directory_changes(espm: Any, ks: KeystoreSetup) -> None:
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env())
    ks.set_tool_env("export STANDIN_KEYSTORE_FAIL=74")
    ks.secrets.write({"a": "2"})
    wait_state(manager, "failed")
    ks.set_tool_env(None)
    changed_at = time.monotonic()
    ks.secrets.write({"a": "3"})
    doc = wait_state(manager, "running", "Keystore updated", timeout=8)
    elapsed = time.monotonic() - changed_at
    # The first backoff is about 2 s (at least 1.6 s): this came from the change, not the timer.
    assert elapsed < 1.2, f"retried after {elapsed:.2f}s"
    assert doc["updates"] == 2 and ks.settings()["a"] == b"3"


# --- reloading Elasticsearch -----------------------------------------------------------------


@pytest.mark.parametrize("ca", ["file", "folder"])
def test_waits_for_elasticsearch_then_reloads_over_tls(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki, ca: str
) -> None:
    es = launch_es("--ready-after", "1.0", keystore=ks.keystore, start=False).start(wait=False)
    ks.secrets.write({"a": "1"})
    ca_path = pki.ca if ca == "file" else pki.ca_folder
    manager = start(espm, reload_env(ks, es, pki, KEYSTORE_ES_CA_CERTS_PATH=str(ca_path)))
    record = manager.wait_log(r"keystore updater waiting")
    assert "Waiting for Elasticsearch to be ready" in record["message"]
    doc = wait_state(manager, "running", "Secure settings reloaded")
    assert doc["reason"] == "Secure settings reloaded" and doc["reloads"] == 1
    stats = es.stats()
    assert stats["reload"] == 1 and stats["unauthorized"] == 0
    assert stats["reload_paths"] == ["/_nodes/_local/reload_secure_settings"]
    # Every update reloads again.
    ks.secrets.write({"a": "2"})
    doc = wait_status(manager, lambda s: s["reloads"] == 2)
    assert doc["updates"] == 2 and doc["reason"] == "Secure settings reloaded"
    assert es.stats()["reload"] == 2


def test_elasticsearch_answering_503_is_waiting(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    es = launch_es(keystore=ks.keystore)
    es.mode("unavailable")
    ks.secrets.write({"a": "1"})
    manager = start(espm, reload_env(ks, es, pki))
    wait_state(manager, "waiting")
    wait_for(lambda: es.stats()["root"] >= 2, timeout=5)  # asked again, still waiting
    doc = status(manager)
    assert doc["state"] == "waiting" and doc["reason"] == "Waiting for Elasticsearch to be ready"
    assert es.stats()["reload"] == 0
    es.mode("ok")
    doc = wait_state(manager, "running", "Secure settings reloaded")
    assert doc["reloads"] == 1 and es.stats()["reload"] == 1


RELOAD_FAILURES = {
    # name: (mode, ES version, password the manager uses, texts expected in the reason)
    "wrong-password": ("ok", "8.15.0", "not-the-password", ["HTTP 401", "unable to authenticate user"]),
    "forbidden": ("forbidden", "8.15.0", ES_PASSWORD, ["HTTP 403", "is unauthorized for user"]),
    "forbidden-all": ("forbidden-all", "8.15.0", ES_PASSWORD, ["HTTP 403", "is unauthorized for user"]),
    "reload-500": ("reload-500", "8.15.0", ES_PASSWORD, ["HTTP 500", "stand-in mode [reload-500]"]),
    "reload-exception": (
        "reload-exception",
        "8.15.0",
        ES_PASSWORD,
        ["standin-node", "stand-in mode [reload-exception]: secure settings could not be reloaded"],
    ),
    "node-failed": ("node-failed", "8.15.0", ES_PASSWORD, ["Failed node ["]),
    "wrong-digest": ("wrong-digest", "9.3.0", ES_PASSWORD, ["standin-node", "digest"]),
}


@pytest.mark.parametrize("failure", sorted(RELOAD_FAILURES))
def test_reload_failures(espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki, failure: str) -> None:
    mode, version, password, expected = RELOAD_FAILURES[failure]
    es = launch_es(keystore=ks.keystore, version=version)
    es.mode(mode)
    ks.secrets.write({"a": "1"})
    manager = start(espm, reload_env(ks, es, pki, KEYSTORE_ES_PASSWORD=password))
    doc = wait_state(manager, "failed")
    assert doc["reason"].startswith(FAILED_RELOAD), doc["reason"]
    for text in expected:
        assert text in doc["reason"], doc["reason"]
    assert doc["reloads"] == 0 and doc["updates"] == 1
    # Wrong credentials are a failure, never "waiting".
    assert not [r for r in manager.read_logs() if "keystore updater waiting" in str(r.get("message"))]


def test_the_digest_reported_by_9_3_matches_the_file_written(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    es = launch_es(keystore=ks.keystore, version="9.3.0")
    ks.secrets.write({"a": "1"})
    manager = start(espm, reload_env(ks, es, pki))
    wait_state(manager, "running", "Secure settings reloaded")
    ks.secrets.write({"a": "2"})
    doc = wait_status(manager, lambda s: s["reloads"] == 2)
    assert doc["state"] == "running" and doc["reason"] == "Secure settings reloaded"


def test_a_failed_reload_is_retried_with_backoff(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    es = launch_es(keystore=ks.keystore)
    es.mode("reload-500")
    ks.secrets.write({"a": "1"})
    manager = start(espm, reload_env(ks, es, pki))
    wait_state(manager, "failed", FAILED_RELOAD)
    failed_at = time.monotonic()
    es.mode("ok")
    doc = wait_state(manager, "running", "Secure settings reloaded", timeout=8)
    elapsed = time.monotonic() - failed_at
    assert 1.0 < elapsed < 6, f"retried after {elapsed:.2f}s"
    assert doc["reloads"] == 1 and es.stats()["reload"] == 2


def test_a_failed_reload_stays_the_news_across_an_update(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    es = launch_es(keystore=ks.keystore)
    es.mode("reload-500")
    ks.secrets.write({"a": "1"})
    manager = start(espm, reload_env(ks, es, pki))
    wait_state(manager, "failed", FAILED_RELOAD)
    ks.secrets.write({"a": "2"})
    doc = wait_status(manager, lambda s: s["updates"] == 2)
    # The keystore is new, but Elasticsearch has not loaded it: that is what the status says.
    assert doc["state"] == "failed" and doc["reason"].startswith(FAILED_RELOAD)
    assert ks.settings()["a"] == b"2"
    es.mode("ok")
    wait_state(manager, "running", "Secure settings reloaded", timeout=10)


def test_a_batch_refused_by_the_tool_is_not_undone_by_the_servers_version(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    # An old tool beside a server that says 8.x (no KEYSTORE_ES_VERSION): the tool's refusal wins.
    es = launch_es(keystore=ks.keystore)
    ks.secrets.write({"a": "1", "b": "2"})
    manager = start(espm, reload_env(ks, es, pki, STANDIN_KEYSTORE_VERSION="6.8.0"))
    wait_state(manager, "running", "Secure settings reloaded")  # GET / answered 8.x meanwhile
    ks.secrets.write({"a": "10", "b": "20"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert [pairs_of(run) for run in ks.runs()[4:]] == [["a"], ["b"]]


def test_updates_while_elasticsearch_is_down_coalesce_into_one_reload(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    es = launch_es(keystore=ks.keystore, start=False)
    ks.secrets.write({"a": "0"})
    manager = start(espm, reload_env(ks, es, pki))
    manager.wait_log("keystore updater waiting")
    for value in ("1", "2", "3"):
        ks.secrets.write({"a": value})
        wait_status(manager, lambda s, v=value: s["updates"] == int(v) + 1)
    assert status(manager)["reloads"] == 0
    es.start()
    doc = wait_status(manager, lambda s: s["reloads"] >= 1)
    time.sleep(0.5)  # a second reload would follow at once
    assert es.stats()["reload"] == 1
    doc = status(manager)
    assert (doc["reloads"], doc["updates"], doc["reason"]) == (1, 4, "Secure settings reloaded")


def test_the_password_can_come_from_a_file(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki, tmp_path: Path
) -> None:
    es = launch_es(keystore=ks.keystore)
    ks.secrets.write({"a": "1"})
    password_file = tmp_path / "es-password"
    password_file.write_text(ES_PASSWORD + "\n")
    env = reload_env(ks, es, pki, KEYSTORE_ES_PASSWORD_FILE=str(password_file))
    del env["KEYSTORE_ES_PASSWORD"]
    manager = start(espm, env)
    doc = wait_state(manager, "running", "Secure settings reloaded")
    assert doc["reloads"] == 1
    assert es.stats()["unauthorized"] == 0


# --- secrets stay secret ---------------------------------------------------------------------


def test_secret_values_never_appear_outside_the_keystore(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    values = {
        "s3.client.default.secret_key": "SV-q7Rk2-secret-key-Wz",
        "multi.line": "SV-q7Rk2-line1\nSV-q7Rk2-line2\n",
        "bad name": "SV-q7Rk2-invalid-name-value",
    }
    es = launch_es(keystore=ks.keystore)
    ks.secrets.write(values)
    manager = start(espm, reload_env(ks, es, pki))
    wait_state(manager, "running", "Secure settings reloaded")
    # A failed update and a successful one, so error paths are covered too.
    ks.set_tool_env("export STANDIN_KEYSTORE_FAIL=74")
    ks.secrets.write({**values, "s3.client.default.secret_key": "SV-q7Rk2-rotated-Wz"})
    wait_state(manager, "failed")
    tool_environ = ks.root / "tool-environ"
    ks.set_tool_env(f'env > "{tool_environ}"')
    ks.secrets.write({**values, "s3.client.default.secret_key": "SV-q7Rk2-rotated-again-Wz"})
    wait_status(manager, lambda s: s["reloads"] == 2)
    assert ES_PASSWORD not in tool_environ.read_text()  # the tool does not get it either

    secrets = [
        ES_PASSWORD,
        "SV-q7Rk2-secret-key-Wz",
        "SV-q7Rk2-rotated-Wz",
        "SV-q7Rk2-rotated-again-Wz",
        "SV-q7Rk2-line1",
        "SV-q7Rk2-line2",
        "SV-q7Rk2-invalid-name-value",
        "SV-q7Rk2",
    ]
    logs = manager.stderr_text()
    doc = json.dumps(status(manager))
    child = manager.status()["pid"]
    with open(f"/proc/{child}/environ", "rb") as f:
        environ = f.read()
    assert b"KEYSTORE_ES_PASSWORD=" not in environ
    tool_log = ks.log.read_text()
    assert tool_log  # the tool did run
    for secret in secrets:
        for form in (secret.encode(), b64(secret.encode())):
            assert form.decode() not in logs, secret
            assert form.decode() not in doc, secret
            assert form not in environ, secret
            assert form.decode() not in tool_log, secret
    # Nothing beside the keystore holds a value, and no work folder is left.
    assert not ks.work_folders()
    for path in ks.conf.rglob("*"):
        if path == ks.keystore or not path.is_file():
            continue
        data = path.read_bytes()
        assert b"SV-q7Rk2" not in data and ES_PASSWORD.encode() not in data, path
    # ... while the keystore does hold the current values.
    settings = parse_keystore(ks.keystore.read_bytes())
    assert settings["s3.client.default.secret_key"] == b"SV-q7Rk2-rotated-again-Wz"
    assert settings["multi.line"] == values["multi.line"].encode()
    assert "bad name" not in settings
    assert not any(name.startswith(WORK_PREFIX) for name in os.listdir(ks.conf))
    # The values were handed to the tool in memfds: no copy on the pod's shared tmpfs either.
    assert not shm_files_holding(b"SV-q7Rk2")


# --- robustness ------------------------------------------------------------------------------


def test_an_unexpected_error_fails_the_update_without_stopping_the_watch(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env())
    # The record of managed names cannot be written (as on a full or read-only disk).
    blocker = ks.conf / ".elasticsearch.keystore.managed.tmp"
    blocker.mkdir()
    ks.secrets.write({"a": "1", "b": "2"})
    doc = wait_state(manager, "failed", FAILED_UPDATE)
    assert "managed" in doc["reason"]
    blocker.rmdir()
    ks.secrets.write({"a": "1", "b": "2", "c": "3"})
    doc = wait_state(manager, "running", "Keystore updated", timeout=5)
    assert doc["settings"] == ["a", "b", "c"]
    assert json.loads(ks.managed.read_text()) == ["a", "b", "c"]
    assert sorted(ks.settings()) == ["a", "b", "c", "keystore.seed"]


def test_a_failing_update_is_not_hidden_by_the_reload_waiting_for_elasticsearch(
    espm: Any, ks: KeystoreSetup, launch_es: EsLauncher, pki: Pki
) -> None:
    es = launch_es(keystore=ks.keystore, start=False)
    ks.secrets.write({"a": "1"})
    manager = start(espm, reload_env(ks, es, pki))
    manager.wait_log("keystore updater waiting")
    ks.set_tool_env("export STANDIN_KEYSTORE_FAIL=74")
    ks.secrets.write({"a": "2"})
    wait_state(manager, "failed", FAILED_UPDATE)
    es.start()  # the first update's reload now goes through...
    wait_status(manager, lambda s: s["reloads"] == 1)
    doc = status(manager)  # ... but the keystore is still behind the Secret
    assert doc["state"] == "failed" and doc["reason"].startswith(FAILED_UPDATE), doc
    ks.set_tool_env(None)
    ks.secrets.write({"a": "3"})
    doc = wait_status(manager, lambda s: s["reloads"] == 2 and s["state"] == "running")
    assert doc["reason"] == "Secure settings reloaded" and ks.settings()["a"] == b"3"


def test_a_tool_that_cannot_be_started_fails_the_update_and_leaks_nothing(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "0"})
    manager = start(espm, ks.env())
    fds = len(os.listdir(f"/proc/{manager.pid}/fd"))
    hidden = ks.binary.with_name("moved-away")
    ks.binary.rename(hidden)
    at = status(manager)["at"]
    for i in range(1, 6):
        ks.secrets.write({"a": str(i)})
        doc = wait_status(manager, lambda s, at=at: s["state"] == "failed" and s["at"] != at)
        at = doc["at"]
    assert doc["reason"].startswith(FAILED_UPDATE) and str(ks.binary) in doc["reason"]
    assert len(os.listdir(f"/proc/{manager.pid}/fd")) <= fds + 1
    assert not ks.work_folders()
    hidden.rename(ks.binary)
    ks.secrets.write({"a": "9"})
    wait_state(manager, "running", "Keystore updated")
    assert ks.settings()["a"] == b"9"


def test_a_keystore_replaced_behind_the_updaters_back_gets_every_setting_again(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "1", "b": "2"})
    manager = start(espm, ks.env())
    # An operator recreates the keystore by hand: our settings are gone from it.
    ks.tool("create", stdin=b"y\n")
    ks.secrets.write({"a": "1", "b": "3"})
    wait_status(manager, lambda s: s["updates"] == 2)
    assert pairs_of(ks.runs()[-1]) == ["a", "b"]
    assert ks.settings() | {"keystore.seed": b""} == {"keystore.seed": b"", "a": b"1", "b": b"3"}


def test_removing_the_last_secrets_when_the_keystore_is_gone_is_no_failure(
    espm: Any, ks: KeystoreSetup
) -> None:
    ks.secrets.write({"a": "1"})
    manager = start(espm, ks.env())
    ks.keystore.unlink()
    ks.secrets.write({})
    doc = wait_status(manager, lambda s: s["settings"] == [])
    assert doc["state"] == "running", doc
    assert json.loads(ks.managed.read_text()) == []
    assert not ks.keystore.exists() and not ks.work_folders()
