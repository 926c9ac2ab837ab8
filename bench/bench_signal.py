"""signal: SIGTERM sent to the manager (PID 1 of a pid namespace) until the child's handler runs.

The child (`helper sig`) handles SIGTERM without exiting, so one child serves every run; its
handler's first act is clock_gettime(CLOCK_MONOTONIC), written to stdout. Here, t0 is taken just
before kill(2). espm, tini and dumb-init run side by side, each as PID 1 under
`unshare --pid --fork --mount-proc`, and are measured in interleaved rounds so that the load of
the machine weighs on all of them alike.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

from harness import MANAGERS, BenchError, Context, Result, Row, Running, espm_env, summary

NAME = "signal"
RUNS = 200
ROUNDS = 4  # the runs of each manager are split in this many interleaved rounds
WARMUP = 10
GAP = (0.002, 0.004)  # seconds between two signals: the manager is idle again
TIMEOUT = 2.0  # a signal not seen by then counts as lost
P99_LIMIT_US = 2000.0
RATIO_LIMIT = 2.0


def _ping(r: Running) -> float | None:
    """One SIGTERM; the latency in microseconds, or None when the handler never ran."""
    pid = r.manager
    t0 = time.monotonic_ns()
    os.kill(pid, signal.SIGTERM)
    try:
        t1 = r.lines.stamp(TIMEOUT)
    except BenchError:
        return None
    return (t1 - t0) / 1000


def run(ctx: Context) -> Result:
    result = Result(NAME)
    runs = ctx.runs.get(NAME, RUNS)
    helper = ctx.helper.path
    env = espm_env()
    started: list[Running] = []
    samples: dict[str, list[float]] = {m: [] for m in MANAGERS}
    lost: dict[str, int] = dict.fromkeys(MANAGERS, 0)
    exit_codes: dict[str, int | None] = {}
    try:
        for name in MANAGERS:
            r = Running(name, [helper, "sig"], pid1=True, env=env)
            started.append(r)
        for r in started:
            r.ready(15)
            _ = r.manager
        rng = random.Random(1)
        for r in started:
            for _ in range(WARMUP):
                _ping(r)
                time.sleep(rng.uniform(*GAP))
        per_round = [runs // ROUNDS + (1 if i < runs % ROUNDS else 0) for i in range(ROUNDS)]
        for count in per_round:
            for r in started:
                for _ in range(count):
                    us = _ping(r)
                    if us is None:
                        lost[r.name] += 1
                    else:
                        samples[r.name].append(us)
                    time.sleep(rng.uniform(*GAP))
        for r in started:
            # SIGINT is forwarded, the child dies of it, the manager exits with 130.
            exit_codes[r.name] = r.stop(signal.SIGINT)
    finally:
        for r in started:
            with contextlib.suppress(Exception):
                r.kill()

    stats = {m: summary(v) for m, v in samples.items()}
    result.details = {"runs": runs, "stats_us": stats, "lost": lost, "exit_codes": exit_codes}
    espm, tini = stats["espm"], stats["tini"]
    ratio = espm["median"] / tini["median"]
    result.details["ratio_median"] = ratio
    result.rows = [
        Row(
            "median latency",
            "us",
            {m: stats[m]["median"] for m in MANAGERS},
            f"<= {RATIO_LIMIT:g}x tini ({ratio:.2f}x)",
            ratio <= RATIO_LIMIT,
        ),
        Row(
            "p99 latency",
            "us",
            {m: stats[m]["p99"] for m in MANAGERS},
            f"< {P99_LIMIT_US:g} us",
            espm["p99"] < P99_LIMIT_US,
        ),
        Row("max latency", "us", {m: stats[m]["max"] for m in MANAGERS}),
    ]
    if any(lost.values()):
        result.rows.append(Row("signals lost", "", {m: lost[m] for m in MANAGERS}, "0", lost["espm"] == 0))
    if exit_codes.get("espm") != 130:
        result.notes.append(f"espm exited with {exit_codes.get('espm')} after SIGINT (expected 130)")
    return result
