"""keystore: from a Secret change until the new keystore is in place, and until it is reloaded.

The Secret folder is laid out and changed as the kubelet does it (a new timestamped folder, a
`..data_tmp` symlink renamed over `..data`); t0 is CLOCK_MONOTONIC just before that rename. Each
change gives every setting a new value and drops one extra setting, so an update needs both an
`add-file` and a `remove`. The keystore tool is espm's stand-in (`espm.standins.keystore_tool`),
sleeping STANDIN_KEYSTORE_DELAY=0.7 s per run as a JVM start would; Elasticsearch is the stand-in
(`espm.standins.elasticsearch`, plain HTTP, basic auth).

- "in place": the first moment the file at KEYSTORE_PATH holds every new value and no longer the
  removed setting (polled: a stat every 2 ms, the file parsed when its inode, size or mtime moved).
- "reload": the first moment the stand-in's GET /_standin/stats counts one more
  reload_secure_settings call (polled every 5 ms once the keystore is in place).

Two designs, each with its own folders and stand-in Elasticsearch:

- espm: `python -m espm -- sleep 600` with the updater on (inotify, one batched `add-file -f`
  run, one `remove` run, in a work folder, then a rename; reload with
  KEYSTORE_RELOAD_CREDENTIALS=true). Each measured change is preceded by an unmeasured one that
  puts the extra setting back (one add-file run and a reload), so every change is the same.
- original: the design espm replaced, run by this file (`python bench_keystore.py original ...`):
  a loop that reads the folder every POLL seconds, compares the contents with the last read and,
  on a difference, runs the tool on the keystore itself once per setting (`add-file -f NAME PATH`
  per changed one, `remove NAME` per stale one), then POSTs /_nodes/_local/reload_secure_settings.
  Its keystore is prepared beforehand by one tool run without the delay (not measured).

Tool runs are counted from STANDIN_KEYSTORE_LOG: lines written during the measured window. The
times at which those lines appear (the tool writes its line at start, before its sleep) are kept
to show where the time goes.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keystore_folders
from harness import (
    PYTHON,
    BenchError,
    Context,
    Result,
    Row,
    espm_env,
    kill_tree,
    median,
    running,
    spawn,
    wait_for,
)
from keystore_folders import EXTRA, TOOL_DELAY, holds, new_values, setting_names

from espm.standins.keystore_tool import logged_runs

NAME = "keystore"
SIZES = (1, 10, 100)
RUNS = 3  # measured changes per size for espm (`--runs keystore=N`)
ORIGINAL_RUNS = 1  # the original design takes ~70 s at 100 settings: once per size
POLL = 1.0  # the original design's polling period
LIMIT_S = 1.6  # espm at 100 settings
SPEEDUP = 30.0  # original / espm at 100 settings, at least
ES_USER = "elastic"
ES_PASSWORD = "bench-es-password"
STATS_PATH = "/_standin/stats"
RELOAD_PATH = "/_nodes/_local/reload_secure_settings"
WIDTH = 3  # digits in the setting names: bench.setting.s000


# -- the stand-ins ------------------------------------------------------------------------------------


class Folders(keystore_folders.Folders):
    """One design's folders, with the stand-in tool's log of its runs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.log = root / "tool.log"

    def tool_env(self) -> dict[str, str]:
        return {"STANDIN_KEYSTORE_DELAY": TOOL_DELAY, "STANDIN_KEYSTORE_LOG": str(self.log)}

    def runs(self) -> list[list[str]]:
        return logged_runs(self.log)


class Http:
    """GET/POST JSON on one host, over a kept-alive connection (reopened when it was closed)."""

    def __init__(self, port: int, auth: tuple[str, str] | None = None) -> None:
        self.port = port
        self.headers = {}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str) -> tuple[int, Any]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, headers=self.headers)
                answer = self.conn.getresponse()
                body = answer.read()
                return answer.status, json.loads(body) if body else None
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        status, doc = self.request("GET", path)
        if status != 200:
            raise BenchError(f"GET {path}: HTTP {status}: {doc}")
        return doc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@contextlib.contextmanager
def standin_es(folders: Folders) -> Iterator[Http]:
    port_file = folders.root / "es.port"
    stderr = (folders.root / "es.stderr").open("wb")
    argv = [
        PYTHON, "-m", "espm.standins.elasticsearch", "--port", "0", "--port-file", str(port_file),
        "--user", ES_USER, "--password", ES_PASSWORD, "--keystore", str(folders.keystore),
    ]  # fmt: skip
    proc = spawn(argv, espm_env(), stderr)
    es: Http | None = None
    try:
        wait_for(lambda: proc.poll() is not None or port_file.exists(), 15, "the stand-in Elasticsearch")
        if proc.poll() is not None:
            raise BenchError(f"stand-in Elasticsearch exited: {(folders.root / 'es.stderr').read_text()}")
        es = Http(int(port_file.read_text()))
        yield es
    finally:
        if es is not None:
            es.close()
        kill_tree(proc)
        stderr.close()


def reload_count(es: Http) -> int:
    return int(es.get(STATS_PATH)["reload"])


# -- one measured change -----------------------------------------------------------------------------


def change(
    folders: Folders, es: Http, values: dict[str, bytes], removed: str | None, timeout: float
) -> dict[str, Any]:
    """Write `values` (without `removed`), then time the keystore and the reload."""
    runs_before = len(folders.runs())
    reloads_before = reload_count(es)
    log_size = folders.log.stat().st_size if folders.log.exists() else 0
    logged: list[int] = []  # when each new tool-log line was seen (ns)

    def seen_log(now: int) -> None:
        nonlocal log_size
        try:
            size = folders.log.stat().st_size
        except FileNotFoundError:
            return
        if size != log_size:
            with folders.log.open("rb") as f:
                f.seek(log_size)
                logged.extend(now for _ in range(f.read(size - log_size).count(b"\n")))
            log_size = size

    t0 = folders.secrets.write(values)
    deadline = time.monotonic() + timeout
    last: tuple[int, int, int] | None = None
    t_keystore = t_reload = None
    while t_keystore is None:
        now = time.monotonic_ns()
        seen_log(now)
        try:
            st = os.stat(folders.keystore)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key is not None and key != last:
            last = key
            if holds(folders.keystore, values, removed):
                t_keystore = now
                break
        if time.monotonic() > deadline:
            raise BenchError(f"the keystore was not in place within {timeout:g}s")
        time.sleep(0.002)
    while t_reload is None:
        now = time.monotonic_ns()
        if reload_count(es) > reloads_before:
            t_reload = now
            break
        seen_log(now)
        if time.monotonic() > deadline:
            raise BenchError(f"no reload within {timeout:g}s")
        time.sleep(0.005)
    seen_log(time.monotonic_ns())
    runs = folders.runs()[runs_before:]
    return {
        "keystore_s": (t_keystore - t0) / 1e9,
        "reload_s": (t_reload - t0) / 1e9,
        "tool_runs": len(runs),
        "commands": [r[0] for r in runs],
        "logged_s": [round((t - t0) / 1e9, 4) for t in logged],
    }


# -- espm -------------------------------------------------------------------------------------------


def espm_status(port: int) -> dict[str, Any]:
    api = Http(port)
    try:
        return dict(api.get("/keystore/status"))
    finally:
        api.close()


def measure_espm(count: int, rounds: int, ctx: Context) -> list[dict[str, Any]]:
    names = setting_names(count, WIDTH)
    with tempfile.TemporaryDirectory(prefix="espm-bench-keystore-") as tmp:
        folders = Folders(Path(tmp))
        current = folders.seed(names)
        with standin_es(folders) as es:
            api_port, env = folders.updater_env(
                "tool",  # this benchmark is the tool's path (keystore-native: the other)
                KEYSTORE_RELOAD_CREDENTIALS="true",
                KEYSTORE_ES_ENDPOINT=f"http://127.0.0.1:{es.port}",
                KEYSTORE_ES_USERNAME=ES_USER,
                KEYSTORE_ES_PASSWORD=ES_PASSWORD,
                **folders.tool_env(),
            )
            with running("espm", ["sleep", "600"], False, env) as espm:

                def settled() -> dict[str, Any] | None:
                    if espm.proc.poll() is not None:
                        raise BenchError(f"espm exited with {espm.proc.returncode}: {espm.stderr()}")
                    with contextlib.suppress(OSError, BenchError, http.client.HTTPException):
                        s = espm_status(api_port)
                        if s["updates"] >= 1 and s["reloads"] >= 1 and s["state"] == "running":
                            return s
                    return None

                wait_for(settled, 30, "espm's first keystore build and reload", interval=0.02)

                def caught_up() -> dict[str, Any] | None:
                    s = espm_status(api_port)
                    return s if s["reloads"] == s["updates"] and s["state"] == "running" else None

                out: list[dict[str, Any]] = []
                for i in range(rounds):
                    if i:  # put the extra setting back (not measured)
                        change(folders, es, {**current, EXTRA: f"extra-{i}".encode()}, None, 30)
                    # The stand-in counts a reload before espm has recorded its answer: wait
                    # until espm's own count caught up (one reload per update), or the
                    # previous change's reload would be counted in this one.
                    before = wait_for(caught_up, 30, "espm to record the last reload", interval=0.02)
                    current = new_values(names, i + 1)
                    one = change(folders, es, current, EXTRA, 30)
                    time.sleep(0.2)  # anything after the reload would show in the status
                    after = espm_status(api_port)
                    one["updates"] = after["updates"] - before["updates"]
                    one["reloads"] = after["reloads"] - before["reloads"]
                    one["state"] = after["state"]
                    out.append(one)
                    if one["updates"] != 1 or one["reloads"] != 1 or after["state"] != "running":
                        raise BenchError(
                            f"espm: unexpected status after a change: {after} (before: {before})"
                        )
                    if ctx.verbose:
                        ctx.log(f"  espm {count}: {one}")
                return out


# -- the floor: two tool runs back to back ------------------------------------------------------------


def two_runs(count: int, rounds: int) -> list[float]:
    """`add-file -f` with every pair, then `remove EXTRA`, spawned one after the other from here:
    what any design that makes these two runs cannot go below (with the same 0.7 s delay)."""
    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix="espm-bench-keystore-") as tmp:
        folders = Folders(Path(tmp))
        pairs = folders.value_files({**new_values(setting_names(count, WIDTH), 0), EXTRA: b"extra"})
        env = folders.direct_env()
        for _ in range(rounds):
            t0 = time.monotonic_ns()
            for args in (["add-file", "-f", *pairs], ["remove", EXTRA]):
                subprocess.run(
                    [str(folders.tool), *args], env=env, check=True, capture_output=True, timeout=60
                )
            out.append((time.monotonic_ns() - t0) / 1e9)
    return out


# -- the original design -----------------------------------------------------------------------------


def measure_original(count: int, rounds: int, ctx: Context) -> list[dict[str, Any]]:
    names = setting_names(count, WIDTH)
    with tempfile.TemporaryDirectory(prefix="espm-bench-keystore-") as tmp:
        folders = Folders(Path(tmp))
        current = folders.seed(names)
        # The starting keystore, in one run without the delay and outside the log.
        pairs = [x for n in [*names, EXTRA] for x in (n, str(folders.secrets.path / n))]
        prep = {k: v for k, v in espm_env().items() if not k.startswith("STANDIN_")}
        prep["ES_PATH_CONF"] = str(folders.conf)
        subprocess.run(
            [str(folders.tool), "add-file", "-f", *pairs],
            env=prep,
            check=True,
            capture_output=True,
            timeout=60,
        )
        with standin_es(folders) as es:
            env = espm_env(**folders.tool_env())
            argv = [
                PYTHON, os.path.abspath(__file__), "original", str(folders.secrets.path), str(folders.conf),
                str(folders.tool), f"http://127.0.0.1:{es.port}", ES_USER, ES_PASSWORD,
            ]  # fmt: skip
            stderr = (folders.root / "original.stderr").open("w+b")
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                start_new_session=True,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != b"ready":
                    stderr.seek(0)
                    raise BenchError(f"the original loop did not start: {stderr.read().decode()[-1000:]}")
                out: list[dict[str, Any]] = []
                for i in range(rounds):
                    if i:
                        change(folders, es, {**current, EXTRA: f"extra-{i}".encode()}, None, 30 + 2 * count)
                    # Not in phase with the loop's polling: it costs 0 to POLL s, POLL/2 on average.
                    time.sleep(random.uniform(0, POLL))
                    current = new_values(names, i + 1)
                    one = change(folders, es, current, EXTRA, 30 + 3 * (count + 1))
                    if proc.poll() is not None:
                        stderr.seek(0)
                        raise BenchError(f"the original loop failed: {stderr.read().decode()[-1000:]}")
                    out.append(one)
                    if ctx.verbose:
                        ctx.log(f"  original {count}: {one}")
                return out
            finally:
                kill_tree(proc)
                stderr.close()


def original_loop(source: str, conf: str, tool: str, endpoint: str, user: str, password: str) -> None:
    """The original design: poll the folder every POLL s; a tool run per setting; reload."""

    def read(folder: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name in os.listdir(folder):
            if name.startswith("."):
                continue
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    out[name] = f.read()
            except (FileNotFoundError, IsADirectoryError):
                pass  # a dangling link while the folder is swapped: the next poll sees it
        return out

    env = dict(os.environ, ES_PATH_CONF=conf)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    known = read(source)
    print("ready", flush=True)
    while True:
        time.sleep(POLL)
        now = read(source)
        if now == known:
            continue
        for name in sorted(now):
            if known.get(name) != now[name]:
                subprocess.run(
                    [tool, "add-file", "-f", name, os.path.join(source, name)],
                    env=env, stdin=subprocess.DEVNULL, check=True, capture_output=True,
                )  # fmt: skip
        for name in sorted(set(known) - set(now)):
            subprocess.run(
                [tool, "remove", name], env=env, stdin=subprocess.DEVNULL, check=True, capture_output=True
            )
        request = urllib.request.Request(
            endpoint + RELOAD_PATH, data=b"", method="POST", headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
        known = now


# -- the benchmark --------------------------------------------------------------------------------


def run(ctx: Context) -> Result:
    rounds = ctx.runs.get(NAME, RUNS)
    res = Result(NAME)
    figures: dict[str, dict[int, dict[str, Any]]] = {"espm": {}, "original": {}}
    samples: dict[str, dict[int, list[dict[str, Any]]]] = {"espm": {}, "original": {}}
    for count in SIZES:
        for design, measure, n in (
            ("espm", measure_espm, rounds),
            ("original", measure_original, ORIGINAL_RUNS),
        ):
            started = time.monotonic()
            got = measure(count, n, ctx)
            samples[design][count] = got
            figures[design][count] = {
                "keystore_s": median([g["keystore_s"] for g in got]),
                "reload_s": median([g["reload_s"] for g in got]),
                "tool_runs": median([g["tool_runs"] for g in got]),
            }
            ctx.log(
                f"  {design:8} {count:3} settings: in place {figures[design][count]['keystore_s']:.3f} s, "
                f"reload {figures[design][count]['reload_s']:.3f} s, "
                f"{figures[design][count]['tool_runs']:g} tool runs "
                f"({len(got)} run{'s' if len(got) > 1 else ''}, {time.monotonic() - started:.1f} s)"
            )
    top = SIZES[-1]
    floor = two_runs(top, 2)
    for key, label in (("keystore_s", "in place"), ("reload_s", "reload")):
        for count in SIZES:
            e, o = figures["espm"][count][key], figures["original"][count][key]
            target, passed = ("", None) if count != top else (f"espm < {LIMIT_S:g} s", e < LIMIT_S)
            res.rows.append(
                Row(
                    f"{label}, {count} setting{'s' if count > 1 else ''}",
                    "s",
                    {"espm": e, "original": o},
                    target,
                    passed,
                )
            )
        e, o = figures["espm"][top][key], figures["original"][top][key]
        res.rows.append(
            Row(
                f"{label}: original/espm at {top}", "x", {"espm": o / e}, f">= {SPEEDUP:g}x", o / e >= SPEEDUP
            )
        )
    for count in SIZES:
        res.rows.append(
            Row(
                f"tool runs per change, {count}",
                "",
                {d: int(figures[d][count]["tool_runs"]) for d in ("espm", "original")},
            )
        )
    res.details = {
        "figures": figures,
        "samples": samples,
        "two_runs_floor_s": floor,
        "tool_delay_s": float(TOOL_DELAY),
        "poll_s": POLL,
    }
    res.notes.append(
        f"espm: median of {rounds} changes per size; original: {ORIGINAL_RUNS} change per size "
        f"(polls every {POLL:g} s: 0 to {POLL:g} s of its figure is the wait for the next poll)"
    )
    for count in SIZES:
        spread = [f"{g['reload_s']:.3f}" for g in samples["espm"][count]]
        res.notes.append(f"espm {count}: change -> reload per run: {', '.join(spread)} s")
    # Where espm's time goes at the largest size, from when the tool's log lines appeared.
    logs = [g["logged_s"] for g in samples["espm"][top] if len(g["logged_s"]) >= 2]
    if logs:
        res.notes.append(
            f"espm {top}, medians: tool run 1 logged at {median([x[0] for x in logs]):.3f} s (the ..data "
            f"swap starts the update at once; then snapshot, value files, spawn, the stand-in's "
            f"start), run 2 at {median([x[1] for x in logs]):.3f} s, keystore in place "
            f"at {figures['espm'][top]['keystore_s']:.3f} s, "
            f"reload at {figures['espm'][top]['reload_s']:.3f} s"
        )
    res.notes.append(
        f"floor: add-file ({top + 1} pairs) then remove, spawned back to back from the harness: "
        f"{median(floor):.3f} s (median of {len(floor)}; 2 x {TOOL_DELAY} s of sleep, the rest is "
        f"the stand-in's start); espm's change -> in place at {top} is "
        f"{figures['espm'][top]['keystore_s'] - median(floor):+.3f} s from it"
    )
    first = samples["original"][top][0]["logged_s"]
    if first:
        res.notes.append(f"original {top}: first tool run logged {first[0]:.3f} s after the change")
    return res


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "original":
        with contextlib.suppress(KeyboardInterrupt):
            original_loop(*sys.argv[2:])
    else:
        sys.exit("usage: bench_keystore.py original SOURCE CONF TOOL ENDPOINT USER PASSWORD")
