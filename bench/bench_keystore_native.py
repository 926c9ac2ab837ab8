"""keystore-native: a Secret change until the new keystore is in place, native writer beside the tool.

Each case runs a real espm (`python -m espm -- sleep 600`, updater on, no reload) on a keystore of a
given format version (3 to 7, made by espm's format module, holding `keystore.seed` and
`bootstrap.password`), over a Secret folder laid out and swapped as the kubelet does it.

- "in place": t0 is CLOCK_MONOTONIC just before the `..data` rename; the harness stats the keystore
  every millisecond and, when its inode, size or mtime moved, takes the time and then decrypts it
  (after the time is taken) to check that it holds every new value and no longer the removed
  setting. Each change gives every setting a new value and drops one extra setting; an unmeasured
  change before each puts the extra setting back, so every measured change is the same.
- RSS: the manager's VmRSS, idle 1 s after the last change (PM_METRICS and PM_EXP_VARS on).
- native: KEYSTORE_WRITER=native. tool (the anchor, same run): KEYSTORE_WRITER=tool with the
  stand-in `elasticsearch-keystore`, sleeping STANDIN_KEYSTORE_DELAY=0.7 s per run as a JVM start
  would, on a format 6 keystore (the stand-in imitates 8.15.0).
- sync: `python -m espm keystore sync --source S --keystore K` as a whole process, exec to exit
  (subprocess start included), 100 settings all new; beside format 6, the anchor is one run of the
  stand-in tool doing the same job (`add-file -f` with 100 pairs, 0.7 s of simulated JVM start);
  the floor is `python -c pass`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    PYTHON,
    BenchError,
    Context,
    Result,
    Row,
    espm_env,
    kib,
    median,
    proc_status,
    running,
    wait_for,
)
from keystore_folders import EXTRA, TOOL_DELAY, Folders, holds, new_values, setting_names

NAME = "keystore-native"
ROUNDS = 5  # measured changes per native case (`--runs keystore-native=N`)
TOOL_ROUNDS = 2
SYNC_ROUNDS = 5
# (format version, settings, target in seconds)
CASES = (
    (3, 100, 0.050),
    (4, 100, 0.050),
    (5, 100, 0.050),
    (6, 100, 0.250),
    (7, 100, 0.250),
    (7, 1000, 0.500),
)
SYNC_LIMIT = 0.300
SYNC_FORMATS = (5, 6, 7)  # the tool anchor runs beside format 6 (the stand-in writes 6)
RSS: dict[tuple[str, int, int], float] = {}  # (writer, format, settings) -> idle MiB after the changes
WIDTH = 4  # digits in the setting names: bench.setting.s0000 (up to 1,000 settings)


def change(folders: Folders, values: dict[str, bytes], removed: str | None, timeout: float) -> float:
    """Swap the Secret to `values`; seconds until the keystore holds them (and not `removed`)."""
    st = os.stat(folders.keystore)
    last = (st.st_ino, st.st_size, st.st_mtime_ns)
    t0 = folders.secrets.write(values)
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic_ns()
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(folders.keystore)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key != last:
                last = key
                if holds(folders.keystore, values, removed):
                    return (now - t0) / 1e9
        if time.monotonic() > deadline:
            raise BenchError(f"the keystore was not in place within {timeout:g}s")
        time.sleep(0.001)


def status(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/keystore/status")
        doc: dict[str, Any] = json.loads(conn.getresponse().read())
        return doc
    finally:
        conn.close()


def measure_updates(fmt: int, count: int, writer: str, rounds: int) -> list[float]:
    settings = setting_names(count, WIDTH)
    with tempfile.TemporaryDirectory(prefix="espm-bench-native-") as tmp:
        folders = Folders(Path(tmp), fmt)
        current = folders.seed(settings)
        port, env = folders.updater_env(
            writer, STANDIN_KEYSTORE_DELAY=TOOL_DELAY, PM_METRICS="true", PM_EXP_VARS="true"
        )
        with running("espm", ["sleep", "600"], False, env) as espm:

            def built() -> bool:
                if espm.proc.poll() is not None:
                    raise BenchError(f"espm exited with {espm.proc.returncode}: {espm.stderr()}")
                with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                    s = status(port)
                    return bool(s["updates"] >= 1 and s["state"] == "running")
                return False

            wait_for(built, 60, "espm's first keystore build", interval=0.02)
            out: list[float] = []
            for i in range(rounds):
                change(folders, {**current, EXTRA: f"extra-{i + 1}".encode()}, None, 60)  # not measured
                current = new_values(settings, i + 1)
                out.append(change(folders, current, EXTRA, 60))
            doc = status(port)
            if doc["state"] != "running" or doc["writer"] != writer:
                raise BenchError(f"espm ({writer}): unexpected status {doc}")
            time.sleep(1.0)  # idle
            RSS[(writer, fmt, count)] = kib(proc_status(espm.manager)["VmRSS"]) / 1024
            return out


def measure_sync(fmt: int, rounds: int) -> tuple[list[float], list[float]]:
    """Exec-to-exit seconds of `espm keystore sync`, and of one stand-in tool run doing the same."""
    settings = setting_names(100, WIDTH)
    espm_times: list[float] = []
    tool_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="espm-bench-sync-") as tmp:
        folders = Folders(Path(tmp), fmt)
        env = espm_env()
        tool_env = folders.direct_env()
        for i in range(rounds):
            values = new_values(settings, i + 1)
            folders.secrets.write(values)
            argv = [PYTHON, "-m", "espm", "keystore", "sync", "--source", str(folders.secrets.path)]
            t0 = time.monotonic_ns()
            done = subprocess.run([*argv, "--keystore", str(folders.keystore)], env=env, capture_output=True)
            espm_times.append((time.monotonic_ns() - t0) / 1e9)
            if done.returncode != 0 or not holds(folders.keystore, values, None):
                raise BenchError(f"espm keystore sync failed ({done.returncode}): {done.stderr.decode()}")
            if fmt != 6 or i >= TOOL_ROUNDS:
                continue
            # The anchor: the stand-in tool (a format 6 writer) adds the same 100 values in one run.
            values = new_values(settings, 100 + i)
            pairs = folders.value_files(values)
            t0 = time.monotonic_ns()
            done = subprocess.run(
                [str(folders.tool), "add-file", "-f", "--", *pairs], env=tool_env, capture_output=True
            )
            tool_times.append((time.monotonic_ns() - t0) / 1e9)
            if done.returncode != 0 or not holds(folders.keystore, values, None):
                raise BenchError(f"the stand-in tool failed ({done.returncode}): {done.stderr.decode()}")
    return espm_times, tool_times


def pbkdf2_floor(rounds: int) -> list[float]:
    """One key derivation of formats 6 and 7 (210,000 rounds of PBKDF2-HMAC-SHA512), in process."""
    out = []
    for _ in range(rounds):
        t0 = time.monotonic_ns()
        hashlib.pbkdf2_hmac("sha512", b"", os.urandom(64), 210_000, 32)
        out.append((time.monotonic_ns() - t0) / 1e9)
    return out


def python_floor(rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.monotonic_ns()
        subprocess.run([PYTHON, "-c", "pass"], check=True)
        out.append((time.monotonic_ns() - t0) / 1e9)
    return out


def run(ctx: Context) -> Result:
    rounds = ctx.runs.get(NAME, ROUNDS)
    res = Result(NAME)
    tool = measure_updates(6, 100, "tool", TOOL_ROUNDS)
    ctx.log(f"  tool   format 6,  100 settings: in place {median(tool):.3f} s ({len(tool)} runs)")
    figures: dict[str, Any] = {"tool_6_100": tool}
    for fmt, count, limit in CASES:
        got = measure_updates(fmt, count, "native", rounds)
        figures[f"native_{fmt}_{count}"] = got
        ctx.log(
            f"  native format {fmt}, {count:4} settings: in place {median(got) * 1000:.1f} ms "
            f"(median of {len(got)}; {', '.join(f'{g * 1000:.0f}' for g in got)} ms)"
        )
        values: dict[str, float | int | None] = {"espm": median(got) * 1000}
        if (fmt, count) == (6, 100):
            values["tool"] = median(tool) * 1000
        res.rows.append(
            Row(
                f"in place, format {fmt}, {count} settings",
                "ms",
                values,
                f"< {limit * 1000:g} ms",
                median(got) < limit,
            )
        )
    floor = python_floor(SYNC_ROUNDS)
    kdf = pbkdf2_floor(SYNC_ROUNDS)
    figures["pbkdf2_210k"] = kdf
    # What formats 6 and 7 cannot go below: a sync reads (one derivation) and writes (another);
    # an update derives once (the file it wrote last is known).
    res.rows.append(Row("PBKDF2-SHA512 210,000 rounds, in process", "ms", {"espm": median(kdf) * 1000}))
    for fmt in SYNC_FORMATS:
        espm_times, tool_times = measure_sync(fmt, SYNC_ROUNDS)
        figures[f"sync_{fmt}"] = espm_times
        ctx.log(f"  sync   format {fmt},  100 settings: exec to exit {median(espm_times) * 1000:.0f} ms")
        values = {"espm": median(espm_times) * 1000, "python": median(floor) * 1000}
        if tool_times:
            figures["tool_sync_6"] = tool_times
            values["tool"] = median(tool_times) * 1000
        res.rows.append(
            Row(
                f"keystore sync, format {fmt}, 100 settings",
                "ms",
                values,
                f"< {SYNC_LIMIT * 1000:g} ms",
                median(espm_times) < SYNC_LIMIT,
            )
        )
    native_rss, tool_rss = RSS.get(("native", 7, 100)), RSS.get(("tool", 6, 100))
    if native_rss is not None and tool_rss is not None:
        res.rows.append(
            Row(
                "manager idle RSS after the changes, 100 settings",
                "MiB",
                {"espm": native_rss, "tool": tool_rss},
            )
        )
    res.details = {
        "figures_s": figures,
        "python_floor_s": floor,
        "tool_delay_s": float(TOOL_DELAY),
        "load_average": os.getloadavg(),
        "idle_rss_mib": {f"{w} format {f}, {c}": v for (w, f, c), v in RSS.items()},
    }
    res.notes.append(
        f"native: median of {rounds} changes per case; tool: {len(tool)} changes, stand-in tool "
        f"sleeping {TOOL_DELAY} s per run (two runs per change: add-file, remove); python: "
        f"`python -c pass`, the floor of any Python process"
    )
    return res


if __name__ == "__main__":
    import sys

    from harness import Helper

    result = run(Context(helper=Helper(), runs={}))
    for row in result.rows:
        print(row)
    sys.exit(0 if result.passed else 1)
