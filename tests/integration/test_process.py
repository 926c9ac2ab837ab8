"""The managed process: its set-up, state machine, stop/kill, the state file and its group."""

from __future__ import annotations

import json
import os
import signal
import time
import zlib

from tests.conftest import base_env, descendants, fixture, free_port, proc_state, wait_for


def env(**overrides: str) -> dict[str, str]:
    return base_env(PM_HTTP_PORT=str(free_port()), **overrides)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def read_child_report(m) -> dict[str, str]:
    report: dict[str, str] = {}
    while True:
        line = m.readline()
        if line == "done":
            return report
        key, _, value = line.partition(" ")
        report.setdefault(key, "")
        report[key] = (report[key] + " " + value).strip()


def test_child_gets_the_managers_original_mask_and_ignored_set(espm) -> None:
    # espm is started with SIGUSR1 blocked and SIGUSR2 and SIGHUP ignored, the way a container
    # runtime might; CPython's own ignoring of SIGPIPE and SIGXFSZ must not leak.
    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGUSR1})
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    m = espm(["python3", fixture("sigstate.py")], preexec=preexec)
    report = read_child_report(m)
    blocked = int(report["SigBlk"], 16)
    ignored = int(report["SigIgn"], 16)
    assert blocked == 1 << (signal.SIGUSR1 - 1)
    # python3 itself then ignores SIGPIPE and SIGXFSZ: mask those out of what it reports.
    python_own = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    assert ignored & ~python_own == (1 << (signal.SIGUSR2 - 1)) | (1 << (signal.SIGHUP - 1))
    assert report["pgid-is-pid"] == "True"
    assert report["pdeathsig"] == str(int(signal.SIGKILL))


def test_sigpipe_and_sigxfsz_start_at_default_in_the_child(espm) -> None:
    # A shell child reports its own dispositions without Python's interference.
    m = espm(["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status; echo done"])
    lines = dict(m.readline().split(":\t") for _ in range(2))
    assert int(lines["SigIgn"], 16) & ((1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))) == 0
    assert int(lines["SigBlk"], 16) == 0


def test_password_and_file_variables_not_passed_to_the_child(espm, tmp_path) -> None:
    # The images' docker-entrypoint.sh acts on every *_FILE variable (and exits 1 unless the
    # file's mode is 400/600): espm's own must not reach it. Other variables pass untouched.
    config = tmp_path / "elasticsearch.yml"
    config.write_text("cluster.name: demo\n")
    e = env(
        KEYSTORE_ES_PASSWORD="hunter2-distinctive",
        KEYSTORE_ES_USERNAME="elastic",
        PM_CONFIG_FILE=str(config),
        PM_STATE_FILE=str(tmp_path / "state.json"),
        ELASTIC_PASSWORD_FILE="/run/secrets/elastic",
    )
    m = espm(["python3", fixture("sigstate.py")], env=e)
    report = read_child_report(m)
    names = report["env"].split()
    assert "KEYSTORE_ES_USERNAME" in names
    assert "ELASTIC_PASSWORD_FILE" in names  # the image's own: not ours to remove
    for private in ("KEYSTORE_ES_PASSWORD", "PM_CONFIG_FILE", "PM_STATE_FILE"):
        assert private not in names
    m.wait()
    assert "hunter2-distinctive" not in m.stderr_text()


def test_status_fields_and_transitions_through_the_api(espm, tmp_path) -> None:
    config = tmp_path / "elasticsearch.yml"
    config.write_text("cluster.name: demo\n")
    m = espm(["sleep", "60"], env=env(PM_CONFIG_FILE=str(config), PM_PROC_NAME="elastic"))
    m.wait_api()
    doc = m.status()
    assert set(doc) == {
        "name",
        "state",
        "since",
        "pid",
        "exit_code",
        "exit_signal",
        "starts",
        "config_checksum",
    }
    assert doc["name"] == "elastic" and doc["state"] == "started" and doc["starts"] == 1
    assert doc["config_checksum"] == str(zlib.crc32(b"cluster.name: demo\n"))
    assert doc["since"].endswith("Z") and "T" in doc["since"]
    assert proc_state(doc["pid"]) is not None

    code, again, _ = m.request("POST", "/elastic/start")
    assert code == 200 and again["pid"] == doc["pid"] and again["starts"] == 1  # idempotent

    code, stopping, _ = m.request("POST", "/elastic/stop")
    assert code == 202 and stopping["state"] == "stopping"
    wait_for(lambda: m.status()["state"] == "stopped")
    code, stopped, _ = m.request("POST", "/elastic/stop")
    assert code == 200 and stopped["state"] == "stopped"
    code, killed, _ = m.request("POST", "/elastic/kill")
    assert code == 200 and killed["state"] == "stopped"  # nothing runs: nothing to kill

    config.write_text("cluster.name: changed\n")
    code, restarted, _ = m.request("POST", "/elastic/start")
    assert code == 200 and restarted["state"] == "started" and restarted["starts"] == 2
    assert restarted["exit_code"] is None and restarted["pid"] != doc["pid"]
    assert restarted["config_checksum"] == str(zlib.crc32(b"cluster.name: changed\n"))

    code, killing, _ = m.request("POST", "/elastic/kill")
    assert code == 202 and killing["state"] == "killing"
    wait_for(lambda: m.status()["state"] == "killed")
    final = m.status()
    assert final["exit_code"] == 137 and final["exit_signal"] == 9 and final["pid"] is None


def test_stop_timeout_escalates_to_sigkill(espm) -> None:
    # The child ignores SIGTERM: only the timeout's SIGKILL ends it.
    m = espm(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"], env=env(PM_STOP_TIMEOUT="0.5")
    )
    assert m.readline() == "ready"
    m.wait_api()
    started = time.monotonic()
    assert m.request("POST", "/es/stop")[0] == 202
    wait_for(lambda: m.status()["state"] == "stopped")
    assert time.monotonic() - started >= 0.45
    assert m.status()["exit_signal"] == signal.SIGKILL


def test_without_stop_timeout_a_stubborn_child_keeps_stopping(espm) -> None:
    m = espm(["sh", "-c", "trap 'echo term' TERM; echo ready; while :; do sleep 0.05; done"])
    assert m.readline() == "ready"
    m.wait_api()
    assert m.request("POST", "/es/stop")[0] == 202
    assert m.readline() == "term"  # SIGTERM came, and the child shrugged it off
    assert m.status()["state"] == "stopping"
    code, doc, _ = m.request("POST", "/es/start")
    assert code == 500 and doc["state"] == "stopping" and "stopping" in doc["error"]
    assert m.request("POST", "/es/stop")[0] == 202  # a stop under way
    code, doc, _ = m.request("POST", "/es/kill")
    assert code == 202 and doc["state"] == "killing"
    # A stop while the kill is under way answers the kill's state (or, once done, killed).
    code, doc, _ = m.request("POST", "/es/stop")
    assert (code, doc["state"]) in ((202, "killing"), (200, "killed"))
    wait_for(lambda: m.status()["state"] == "killed")


def test_leftovers_of_the_group_are_killed_when_the_main_process_ends(espm, tmp_path) -> None:
    pidfile = tmp_path / "bg"
    # The main process leaves a background sleeper in its group and exits.
    m = espm(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; exit 3"])
    assert m.wait() == 3
    leftover = int(pidfile.read_text())
    wait_for(lambda: proc_state(leftover) in (None, "Z"), timeout=5)


def test_failed_start_through_the_api_keeps_serving(espm, tmp_path) -> None:
    script = tmp_path / "es.sh"
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(0o755)
    m = espm([str(script)])
    m.wait_api()
    m.request("POST", "/es/kill")
    wait_for(lambda: m.status()["state"] == "killed")
    script.chmod(0o644)  # no longer executable
    code, doc, _ = m.request("POST", "/es/start")
    assert code == 500 and doc["state"] == "startFailed" and "Permission denied" in doc["error"]
    code, health, _ = m.request("GET", "/health")
    assert code == 500 and health["status"] == "error" and "startFailed" in health["reason"]
    script.chmod(0o755)
    code, doc, _ = m.request("POST", "/es/start")
    assert code == 200 and doc["state"] == "started"
    assert m.request("GET", "/health")[0] == 200


def test_state_file_keeps_an_operator_stop_across_a_restart(espm, tmp_path, pid1: bool) -> None:
    state = tmp_path / "state" / "espm.json"
    state.parent.mkdir()
    marker = tmp_path / "runs"
    command = ["sh", "-c", f"echo run >> {marker}; exec sleep 60"]
    e = env(PM_STATE_FILE=str(state))
    first = espm(command, env=e, pid1=pid1)
    first.wait_api()
    assert json.loads(state.read_text())["state"] == "started"
    first.request("POST", "/es/stop")
    wait_for(lambda: json.loads(state.read_text())["state"] == "stopped")
    first.signal(signal.SIGTERM)  # nothing runs: the manager exits 0
    assert first.wait() == 0
    assert marker.read_text().count("run") == 1
    assert not [p for p in os.listdir(state.parent) if p != "espm.json"]  # no temporary left

    second = espm(command, env=e, pid1=pid1)
    second.wait_api()
    assert second.status()["state"] == "stopped" and second.status()["pid"] is None
    assert marker.read_text().count("run") == 1  # kept down
    second.request("POST", "/es/start")
    wait_for(lambda: marker.read_text().count("run") == 2)
    assert json.loads(state.read_text())["state"] == "started"


def test_state_file_recording_a_crash_starts_the_process(espm, tmp_path) -> None:
    state = tmp_path / "espm.json"
    state.write_text('{"state": "failed", "since": "2026-01-01T00:00:00.000Z"}')
    m = espm(["sh", "-c", "echo up; exec sleep 60"], env=env(PM_STATE_FILE=str(state)))
    assert m.readline() == "up"


def gated_updater_env(tmp_path, gate) -> dict[str, str]:
    """An updater whose keystore tool waits until the file `gate` exists (a build held open)."""
    import sys

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "a.setting").write_text("x")
    tool = tmp_path / "elasticsearch-keystore"
    tool.write_text(
        f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.01; done\n"
        f'exec {sys.executable} -m espm.standins.keystore_tool "$@"\n'
    )
    tool.chmod(0o755)
    return env(
        PM_KEYSTORE_UPDATER="true",
        KEYSTORE_SOURCE_DIR=str(secrets),
        KEYSTORE_BINARY=str(tool),
        KEYSTORE_PATH=str(tmp_path / "elasticsearch.keystore"),
    )


def test_the_api_answers_during_a_long_first_keystore_build(espm, tmp_path) -> None:
    marker = tmp_path / "started"
    gate = tmp_path / "gate"
    m = espm(["sh", "-c", f"touch {marker}; exec sleep 60"], env=gated_updater_env(tmp_path, gate))
    m.wait_api()
    wait_for(lambda: any("elasticsearch-keystore" in cmdline(p) for p in descendants(m.pid)))  # building
    assert m.request("GET", "/health")[0] == 200  # liveness probes pass meanwhile
    code, doc, _ = m.request("GET", "/keystore/status")
    assert code == 200 and (doc["state"], doc["reason"]) == ("notInitialized", "Keystore updater created")
    # An operator's start cannot get ahead of the keystore.
    code, doc, _ = m.request("POST", "/es/start")
    assert code == 500 and doc["state"] == "notInitialized" and "keystore is being built" in doc["error"]
    assert not marker.exists()
    gate.touch()  # the build goes on, and the process starts once it is done
    wait_for(marker.exists, timeout=10)
    assert m.status()["state"] == "started" and m.status()["starts"] == 1
    assert m.request("GET", "/keystore/status")[1]["reason"] == "Keystore updated"


def test_sigterm_during_the_first_keystore_build_exits_zero_without_starting(espm, tmp_path) -> None:
    # A slow keystore tool (a JVM start of 3 s) keeps the manager in its first build.
    import sys

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "a.setting").write_text("x")
    tool = tmp_path / "elasticsearch-keystore"
    tool.write_text(f'#!/bin/sh\nexec {sys.executable} -m espm.standins.keystore_tool "$@"\n')
    tool.chmod(0o755)
    marker = tmp_path / "started"
    e = env(
        PM_KEYSTORE_UPDATER="true",
        KEYSTORE_SOURCE_DIR=str(secrets),
        KEYSTORE_BINARY=str(tool),
        KEYSTORE_PATH=str(tmp_path / "elasticsearch.keystore"),
        STANDIN_KEYSTORE_DELAY="3",
    )
    m = espm(["touch", str(marker)], env=e)
    wait_for(lambda: any("add-file" in cmdline(p) for p in descendants(m.pid)))
    m.signal(signal.SIGUSR1)
    m.wait_log("SIGUSR1 dropped")
    m.signal(signal.SIGTERM)
    assert m.wait(timeout=5) == 0
    assert not marker.exists()


def test_sigterm_to_the_manager_during_an_operators_stop_ends_the_manager(espm) -> None:
    # The pod is deleted while an operator's stop is under way: once the process ends, the
    # manager must exit too, instead of waiting for a start that will never come.
    m = espm(
        ["sh", "-c", "trap 'echo term; sleep 0.3; exit 143' TERM; echo ready; while :; do sleep 0.05; done"]
    )
    assert m.readline() == "ready"
    m.wait_api()
    assert m.request("POST", "/es/stop")[0] == 202
    assert m.readline() == "term"
    m.signal(signal.SIGTERM)
    assert m.wait(timeout=5) == 143


def test_after_an_operators_stop_the_manager_keeps_serving(espm) -> None:
    m = espm(["sh", "-c", "trap 'exit 143' TERM; echo ready; while :; do sleep 0.05; done"])
    assert m.readline() == "ready"
    m.wait_api()
    m.request("POST", "/es/stop")
    wait_for(lambda: m.status()["state"] == "stopped")
    # Still there, waiting for a start: SIGTERM now finds no process and ends espm with 0
    # (had espm exited with the process, its status would be 143).
    m.signal(signal.SIGTERM)
    assert m.wait() == 0
    m.wait_log("SIGTERM with no process running: exiting")
