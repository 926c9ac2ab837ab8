"""Zombies: every orphan is reaped, and the managed process's status is never stolen."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import PYTHON, base_env, descendants, fixture, proc_state, wait_for


def zombies_below(pid: int) -> list[int]:
    return [p for p in descendants(pid) if proc_state(p) == "Z"]


@pytest.mark.parametrize("pid1", [False, True], ids=["subreaper", "pid1"])
def test_no_zombie_left_after_hundreds_of_orphans(espm, pid1: bool) -> None:
    m = espm(["python3", fixture("orphans.py"), "500", "0", "--linger"], pid1=pid1)
    assert m.readline() == "ready"
    assert m.readline() == "released"
    manager = m.pid
    # All 500 orphans ended; the reaper collects them, so none stays a zombie.
    wait_for(lambda: len(descendants(manager)) == 1 and not zombies_below(manager))
    assert m.proc.poll() is None
    # The child itself is still running, still the one the status names.
    m.wait_api()
    assert m.status()["state"] == "started"


@pytest.mark.parametrize("pid1", [False, True], ids=["subreaper", "pid1"])
def test_orphans_left_behind_are_reaped_when_kept(espm, pid1: bool) -> None:
    # The orphans outlive the child; they are killed with... nothing: they are outside its
    # group only if they changed it. Here they stay in the group and go with the child.
    m = espm(["python3", fixture("orphans.py"), "50", "7", "--stay", "--wait", "0.2"], pid1=pid1)
    assert m.readline() == "ready"
    assert m.wait() == 7


def test_exit_status_42_in_an_orphan_storm_every_time() -> None:
    # 300 orphans end at the very moment the child exits 42; the reaper sees them all in one
    # sweep, and still hands 42 to the process. Many runs, as PID 1, 4 at a time.
    runs, batch = 24, 4
    codes = []
    for _ in range(runs // batch):
        procs = [
            subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    PYTHON,
                    "-m",
                    "espm",
                    "--",
                    PYTHON,
                    fixture("orphans.py"),
                    "300",
                    "42",
                ],
                env=base_env(PM_HTTP_PORT="0", PM_LOG_LEVEL="warning"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(batch)
        ]
        codes += [p.wait(60) for p in procs]
    assert codes == [42] * runs


def test_exit_status_42_in_an_orphan_storm_as_subreaper() -> None:
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "espm", "--", PYTHON, fixture("orphans.py"), "300", "42"],
            env=base_env(PM_HTTP_PORT="0", PM_LOG_LEVEL="warning"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(8)
    ]
    assert [p.wait(60) for p in procs] == [42] * 8


def test_reaper_off_leaves_orphans_alone_but_reaps_the_child(espm) -> None:
    m = espm(["sh", "-c", "exit 5"], env=base_env(PM_REAPER="false", PM_HTTP_PORT="0"))
    assert m.wait() == 5
