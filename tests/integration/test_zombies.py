"""Zombies: every orphan is reaped, and the managed process's status is never stolen."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.conftest import PYTHON, base_env, children, descendants, fixture, free_port, proc_state, wait_for


def zombies_below(pid: int) -> list[int]:
    return [p for p in descendants(pid) if proc_state(p) == "Z"]


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


def test_orphans_left_behind_are_reaped_when_kept(espm, pid1: bool) -> None:
    # 50 orphans outlive their parent and stay in the child's group, adopted by espm. An
    # operator's kill takes the group down: espm keeps serving, and reaps every one of them.
    m = espm(
        ["python3", fixture("orphans.py"), "50", "0", "--stay", "--linger"],
        pid1=pid1,
        env=base_env(PM_HTTP_PORT=str(free_port()), PM_EXP_VARS="true"),
    )
    assert m.readline() == "ready"
    assert m.readline() == "released"
    manager = m.pid
    assert len(children(manager)) == 51  # adopted: the child and its 50 orphans
    m.wait_api()
    assert m.request("POST", "/es/kill")[0] == 202
    wait_for(lambda: m.status()["state"] == "killed")
    wait_for(lambda: children(manager) == [])  # not one zombie left
    assert m.request("GET", "/debug/vars")[1]["counters"]["zombies_reaped"] == 50
    assert m.proc.poll() is None


def storm_of_orphans(pid1: bool, runs: int) -> list[int]:
    """`runs` managers (4 at a time) whose child exits 42 as 300 orphans end: their statuses."""
    codes: list[int] = []
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if pid1 else []
    for start in range(0, runs, 4):
        procs = [
            subprocess.Popen(
                [*prefix, PYTHON, "-m", "espm", "--", PYTHON, fixture("orphans.py"), "300", "42"],
                env=base_env(PM_HTTP_PORT="0", PM_LOG_LEVEL="warning"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(min(4, runs - start))
        ]
        codes += [p.wait(20) for p in procs]
    return codes


def test_exit_status_42_in_an_orphan_storm_every_time(pid1: bool) -> None:
    # 300 orphans end at the very moment the child exits 42; the reaper sees them all in one
    # sweep, and still hands 42 to the process, end to end. A status stolen or swapped within a
    # sweep is caught deterministically by tests/unit/test_reaper.py; these runs check the whole.
    assert storm_of_orphans(pid1, 4) == [42] * 4


def test_reaper_off_leaves_orphans_alone_but_reaps_the_child(espm, pid1: bool) -> None:
    m = espm(
        ["python3", fixture("orphans.py"), "20", "0", "--linger"],
        pid1=pid1,
        env=base_env(PM_REAPER="false", PM_HTTP_PORT=str(free_port())),
    )
    assert m.readline() == "ready"
    manager = m.pid
    # The child leads its own group; the orphans (alive until released, in its group) do not.
    (child,) = [c for c in children(manager) if os.getpgid(c) == c]
    if not pid1:
        # Not a subreaper: the orphans were adopted elsewhere, never by espm.
        assert children(manager) == [child]
    assert m.readline() == "released"
    if pid1:
        # As PID 1 the kernel gives espm the orphans; with the reaper off they stay zombies.
        wait_for(lambda: len(zombies_below(manager)) == 20)
    m.wait_api()
    # A wake-up (a forwarded signal sweeps for ended children), then a turn of the loop.
    m.signal(signal.SIGWINCH)
    m.wait_log("forwarded SIGWINCH")
    m.status()
    assert len(zombies_below(manager)) == (20 if pid1 else 0)
    # Its own child is still reaped: its end is seen.
    assert m.request("POST", "/es/kill")[0] == 202
    wait_for(lambda: m.status()["state"] == "killed")
    assert m.status()["exit_code"] == 137
    assert len(zombies_below(manager)) == (20 if pid1 else 0)
