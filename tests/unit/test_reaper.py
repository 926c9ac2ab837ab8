"""The reaper on real children: every owner gets its own child's status, whatever else ended.

Each case runs in a fresh interpreter: `waitpid(-1)` must not collect the test runner's children.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import PYTHON

# 100 children end before one sweep; every other one has an owner, the rest are "orphans".
SCRIPT = """
import json, os, sys, time
from espm.supervisor.reaper import Reaper

reaper = Reaper(reap_orphans=sys.argv[1] == "on")
got, pids = {}, []
for i in range(100):
    pid = os.fork()
    if pid == 0:
        os._exit(i + 1)
    pids.append(pid)
    if i % 2:
        reaper.register(pid, lambda status, i=i: got.setdefault(i, os.waitstatus_to_exitcode(status)))


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


while any(state(pid) != "Z" for pid in pids):
    time.sleep(0.001)
reaper.reap()
zombies = sum(1 for pid in pids if os.path.exists(f"/proc/{pid}") and state(pid) == "Z")
print(json.dumps({"got": got, "orphans": reaper.orphans_reaped, "zombies": zombies}))
"""


@pytest.mark.parametrize("reaper", ["on", "off"])
def test_one_sweep_hands_each_owner_its_own_status(reaper: str) -> None:
    done = subprocess.run([PYTHON, "-c", SCRIPT, reaper], capture_output=True, check=True, timeout=30)
    result = json.loads(done.stdout)
    # Owners: each gets exactly its child's exit code, none stolen, none swapped.
    assert result["got"] == {str(i): i + 1 for i in range(1, 100, 2)}
    if reaper == "on":
        assert (result["orphans"], result["zombies"]) == (50, 0)
    else:
        # PM_REAPER=false: the others are left alone, zombies for their real parent to collect.
        assert (result["orphans"], result["zombies"]) == (0, 50)
