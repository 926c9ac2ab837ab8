"""The test suite's wall time, beside an anchor measured in the same run.

    python bench/bench_suite.py             # one run of `python -m pytest -q`
    python bench/bench_suite.py --runs 3    # three, one after the other
    python bench/bench_suite.py -- -n 2     # extra pytest arguments after --

The suite's time follows the machine more than the code: on the 2-core CI machine the same
commit took 46 s and 79 s an hour apart. So each run is framed by an anchor, a fixed load that
looks like the suite's (Python processes that import asyncio, two at a time), timed just before
and just after it. A slower suite beside a steady anchor is the code; both slower is the machine.
Prints one line per run; exits 1 when a run's tests did not all pass.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR_STARTS = 200


def anchor() -> float:
    """Seconds for ANCHOR_STARTS starts of `python -c "import asyncio"`, two at a time."""
    argv = [sys.executable, "-c", "import asyncio"]
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: subprocess.run(argv, check=True), range(ANCHOR_STARTS)))
    return time.perf_counter() - started


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def one_run(extra: list[str]) -> tuple[bool, str]:
    before = anchor()
    busy0, total0 = busy_jiffies()
    cpu0 = os.times()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *extra], cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    cpu1 = os.times()
    busy1, total1 = busy_jiffies()
    after = anchor()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    busy = (busy1 - busy0) / max(total1 - total0, 1)
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in [\d.]+s", done.stdout, re.MULTILINE)
    line = (
        f"{summary[-1] if summary else 'no summary'}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
        f"the machine {busy:.0%} busy; anchor {before:.2f} s before, {after:.2f} s after"
    )
    # The tests that failed, by name (pytest's -ra summary), so that a flaky one is not lost.
    failed = re.findall(r"^(?:FAILED|ERROR) .*$", done.stdout, re.MULTILINE)
    return done.returncode == 0, "\n  ".join([line, *failed])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="pytest arguments (after --)")
    args = parser.parse_args()
    print(f"anchor: {ANCHOR_STARTS} starts of `python -c 'import asyncio'`, two at a time", flush=True)
    ok = True
    for i in range(args.runs):
        passed, line = one_run(args.extra)
        ok = ok and passed
        print(f"run {i + 1}: {line}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
