"""standalone: the standalone executable (dist/espm) beside the venv install, measured in one run.

    python bench/bench_standalone.py [--dist DIR] [--runs N] [--signals N]

Columns: `venv` is `python -m espm` from this interpreter's environment (the anchor);
`standalone` is dist/espm (the one-folder build that tools/build-standalone ships); `onefile`
is dist/onefile/espm when `tools/build-standalone --onefile` made it (for comparison: it is
not shipped). Figures, each with the same method as the benchmark of the same name in run.py:
- size: the files each needs, and the Python installation the venv needs besides;
- start-up: exec of the manager until the managed child runs (`helper stamp`), median of N
  interleaved runs;
- idle memory: VmRSS of every process of the manager (the onefile build is two: its bootloader
  and the Python it unpacks), API on, `sleep` child, after 1 s idle;
- SIGTERM forwarding: as PID 1 of a PID namespace, SIGTERM to the manager until the child's
  handler runs (`helper sig`), median and p99 of N interleaved signals.
Needs root (PID namespaces) and cc; run it after tools/build-standalone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from bench_signal import _ping  # noqa: E402
from bench_startup import _one as start_once  # noqa: E402
from harness import (  # noqa: E402
    PYTHON,
    Helper,
    Running,
    descendants,
    espm_env,
    free_port,
    kib,
    kill_tree,
    listening,
    manager_argv,
    median,
    percentile,
    proc_status,
    spawn,
    wait_for,
)

IDLE = 1.0
CHILD = ["sleep", "600"]


def tree_size(path: Path) -> int:
    """Bytes of the files under path (or of path itself), links not followed."""
    if not path.is_dir():
        return path.lstat().st_size if path.exists() else 0
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(folder, f)).st_size for f in files)
    return total


def sizes(managers: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    import h11

    import espm

    mib = 1024 * 1024
    venv_files = tree_size(Path(espm.__file__).parent) + tree_size(Path(h11.__file__).parent)
    out = {"venv": {"files": venv_files / mib, "interpreter": tree_size(Path(sys.base_prefix)) / mib}}
    for name, argv in managers.items():
        exe = Path(argv[0])
        files = tree_size(exe) + tree_size(exe.parent / "espm-lib") * (name == "standalone")
        out[name] = {"files": files / mib, "interpreter": 0.0}
    return out


def idle_rss(name: str, env: dict[str, str]) -> float:
    """MiB of VmRSS summed over the manager's own processes (not the `sleep` child)."""
    port = free_port()
    proc = spawn(manager_argv(name, CHILD, False), {**env, "PM_HTTP_PORT": str(port)})
    try:
        wait_for(lambda: proc.poll() is not None or listening(port), 15, f"{name} listening")
        wait_for(lambda: proc.poll() is not None or _sleeping(proc.pid), 15, f"the child of {name}")
        if proc.poll() is not None:
            raise harness.BenchError(f"{name} exited with {proc.returncode}")
        time.sleep(IDLE)
        own = [p for p in [proc.pid, *descendants(proc.pid)] if not _is_sleep(p)]
        return sum(kib(proc_status(p)["VmRSS"]) for p in own) / 1024
    finally:
        # SIGTERM first: a one-file build killed outright leaves its unpacked folder in /tmp.
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        kill_tree(proc)


def _is_sleep(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/exe").endswith("/sleep")
    return False


def _sleeping(pid: int) -> bool:
    return any(_is_sleep(p) for p in descendants(pid))


def startup(names: list[str], helper: str, env: dict[str, str], runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # one untimed run each: page cache, .pyc files
        start_once(name, helper, env)
    for _ in range(runs):
        for name in names:
            times[name].append(start_once(name, helper, env))
    return {n: median(v) for n, v in times.items()}


def sigterm(
    names: list[str], helper: str, env: dict[str, str], runs: int
) -> dict[str, tuple[float, float, int]]:
    """(median us, p99 us, lost) per manager."""
    started = [Running(name, [helper, "sig"], pid1=True, env=env) for name in names]
    samples: dict[str, list[float]] = {n: [] for n in names}
    lost = dict.fromkeys(names, 0)
    rng = random.Random(1)
    try:
        for r in started:
            r.ready(15)
            for _ in range(10):  # warm-up
                _ping(r)
                time.sleep(rng.uniform(0.002, 0.004))
        for _ in range(4):  # interleaved rounds
            for r in started:
                for _ in range(runs // 4):
                    us = _ping(r)
                    if us is None:
                        lost[r.name] += 1
                    else:
                        samples[r.name].append(us)
                    time.sleep(rng.uniform(0.002, 0.004))
    finally:
        for r in started:
            r.stop(signal.SIGINT)
    return {n: (median(samples[n]), percentile(samples[n], 99), lost[n]) for n in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dist", type=Path, default=HERE.parent / "dist")
    parser.add_argument("--runs", type=int, default=20, help="start-up runs per manager (20)")
    parser.add_argument("--signals", type=int, default=200, help="SIGTERMs per manager (200)")
    args = parser.parse_args()
    managers = {"standalone": [str(args.dist.resolve() / "espm")]}
    if (args.dist / "onefile" / "espm").is_file():
        managers["onefile"] = [str(args.dist.resolve() / "onefile" / "espm")]
    if not Path(managers["standalone"][0]).is_file():
        print(
            f"bench_standalone: no {managers['standalone'][0]}: run tools/build-standalone", file=sys.stderr
        )
        return 2
    harness.EXTRA_MANAGERS.update(managers)
    # The venv is measured as installed: byte-compiled, as pip install leaves it.
    import compileall

    import espm

    compileall.compile_dir(str(Path(espm.__file__).parent), quiet=1)
    names = ["espm", *managers]
    columns = ["venv", *managers]
    env = espm_env()
    frozen_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    helper = Helper()
    try:
        print(
            f"# venv: {PYTHON} -m espm; " + "; ".join(f"{n}: {a[0]}" for n, a in managers.items()), flush=True
        )
        size = sizes(managers)
        rss = {n: idle_rss(n, env if n == "espm" else frozen_env) for n in names}
        # Start-up and signals: the venv with its PYTHONPATH; the frozen builds ignore it anyway.
        start = startup(names, helper.path, env, args.runs)
        sig = sigterm(names, helper.path, env, args.signals)
    finally:
        helper.close()

    def row(metric: str, unit: str, values: list[str]) -> None:
        print(f"{metric:<40} {unit:<5} " + " ".join(f"{v:>12}" for v in values))

    row("", "", columns)
    row("size: files installed", "MiB", [f"{size[c]['files']:.1f}" for c in columns])
    row("size: + Python installation it needs", "MiB", [f"{size[c]['interpreter']:.1f}" for c in columns])
    row(f"start-up to child running (median/{args.runs})", "ms", [f"{start[n]:.1f}" for n in names])
    row("idle VmRSS, all its processes", "MiB", [f"{rss[n]:.1f}" for n in names])
    row(f"SIGTERM forwarding median ({args.signals})", "us", [f"{sig[n][0]:.0f}" for n in names])
    row("SIGTERM forwarding p99", "us", [f"{sig[n][1]:.0f}" for n in names])
    lost = [sig[n][2] for n in names]
    if any(lost):
        row("signals lost", "", [str(v) for v in lost])
    return 0


if __name__ == "__main__":
    sys.exit(main())
