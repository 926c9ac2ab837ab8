"""memory soak: does the everything-on manager's RSS level off under a steady mixed load?

    python bench/memory_soak.py --minutes 12            # RSS every 30 s
    python bench/memory_soak.py --minutes 12 --profiler # also diff /debug/pprof/heap (tracemalloc)

The manager of bench_memory.py's "everything on" (HTTPS API, the updater reloading a stand-in
Elasticsearch over HTTPS, metrics, vars), on loopback, under a steady mix: a connection of ten
requests (every read endpoint) twice a second, a Secret update every 20 s (written, reloaded),
and a stop/start of the child every 2 minutes. /proc/<manager>/status is read every --interval
seconds. With --profiler, PM_PROFILER is on (tracemalloc from the start: RSS is then higher than
without) and the heap's top allocation sites at the first sample after warm-up and at the end are
diffed. The anchor is the same manager's RSS at the end of warm-up (WARMUP seconds).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_memory import PATHS, PER_CONNECTION, _get, _https, everything_on
from harness import (
    kib,
    proc_status,
    wait_for,
)

WARMUP = 120.0
UPDATE_EVERY = 20.0
CYCLE_EVERY = 120.0
_HEAP_LINE = re.compile(r"\s*(\d+) B\s+(\d+) blocks\s+(.*)")


def _heap(port: int, ca: Path) -> dict[str, int]:
    conn = _https(port, ca)
    try:
        _, body = _get(conn, "/debug/pprof/heap")
    finally:
        conn.close()
    sites: dict[str, int] = {}
    for line in body.decode().splitlines()[1:]:
        m = _HEAP_LINE.match(line)
        if m:
            sites[m.group(3)] = int(m.group(1))
    return sites


def _reloads(port: int, ca: Path) -> int:
    conn = _https(port, ca)
    try:
        return int(json.loads(_get(conn, "/keystore/status")[1])["reloads"])
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--profiler", action="store_true")
    parser.add_argument("--warmup", type=float, default=WARMUP, help="seconds before the anchor")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="espm-memory-soak-") as tmp,
        everything_on(Path(tmp), profiler=args.profiler) as pod,
    ):
        proc, port, ca_path, secrets = pod.proc, pod.port, pod.ca_path, pod.secrets
        samples: list[tuple[float, float]] = []
        codes: dict[int, int] = {}
        heaps: list[dict[str, int]] = []
        updates = cycles = 0
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = start
        next_update = start + UPDATE_EVERY
        next_cycle = start + CYCLE_EVERY
        i = 0
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"espm exited with {proc.returncode}")
            now = time.monotonic()
            if now >= next_sample:
                rss = kib(proc_status(proc.pid)["VmRSS"]) / 1024
                samples.append((round(now - start, 1), rss))
                print(f"  t={now - start:6.0f}s RSS {rss:.2f} MiB", flush=True)
                if args.profiler and (not heaps and now - start >= args.warmup):
                    heaps.append(_heap(port, ca_path))
                next_sample += args.interval
            if now >= next_update:
                updates += 1
                secrets.write(
                    {"s3.client.default.access_key": f"a{updates}", "s3.client.default.secret_key": "s"}
                )
                next_update += UPDATE_EVERY
            conn = _https(port, ca_path)
            for j in range(PER_CONNECTION):
                if now >= next_cycle and j == 0:
                    cycles += 1
                    next_cycle += CYCLE_EVERY
                    for action in ("stop", "start"):
                        conn.request("POST", f"/es/{action}")
                        answer = conn.getresponse()
                        answer.read()
                        codes[answer.status] = codes.get(answer.status, 0) + 1
                status, _ = _get(conn, PATHS[(i + j) % len(PATHS)])
                codes[status] = codes.get(status, 0) + 1
            conn.close()
            i += PER_CONNECTION
            time.sleep(0.5)
        rss = kib(proc_status(proc.pid)["VmRSS"]) / 1024
        samples.append((round(time.monotonic() - start, 1), rss))
        # Then idle, as bench_memory measures: the load stops, one more update is made and
        # reloaded, and RSS is read a second later.
        updates += 1
        secrets.write({"s3.client.default.access_key": f"a{updates}", "s3.client.default.secret_key": "s"})
        wait_for(lambda: _reloads(port, ca_path) >= updates + 1, 30, "the last reload", interval=0.2)
        time.sleep(1.0)
        idle = kib(proc_status(proc.pid)["VmRSS"]) / 1024
        if args.profiler:
            heaps.append(_heap(port, ca_path))
        conn = _https(port, ca_path)
        keystore_doc = json.loads(_get(conn, "/keystore/status")[1])
        conn.close()
    warm = [rss for t, rss in samples if t >= args.warmup] or [samples[-1][1]]
    done = f"{keystore_doc.get('updates')} updates, {keystore_doc.get('reloads')} reloads"
    print(f"answers {codes}; {updates} Secret updates, {cycles} stop/start cycles; keystore: {done}")
    print(f"RSS: start {samples[0][1]:.2f} MiB, after warm-up (anchor) {warm[0]:.2f}, "
          f"end {samples[-1][1]:.2f}, max {max(r for _, r in samples):.2f}; growth after warm-up "
          f"{samples[-1][1] - warm[0]:+.2f} MiB")  # fmt: skip
    print(f"idle after the load and one more update: {idle:.2f} MiB")
    if len(warm) >= 4:
        half = len(warm) // 2
        print(f"growth in the first half after warm-up {warm[half] - warm[0]:+.2f} MiB, "
              f"in the second half {warm[-1] - warm[half]:+.2f} MiB")  # fmt: skip
    if len(heaps) == 2:
        first, last = heaps
        print("heap (tracemalloc top sites), growth from warm-up to the end:")
        for site in sorted(set(first) | set(last), key=lambda s: first.get(s, 0) - last.get(s, 0))[:12]:
            print(f"  {last.get(site, 0) - first.get(site, 0):+9d} B  {site}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"samples": samples, "idle": idle, "codes": codes, "heaps": heaps})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
