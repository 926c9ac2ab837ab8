"""Run the espm benchmarks, each beside its anchors (tini, dumb-init, supervisord) in the same run.

    python bench/run.py                   # all of them
    python bench/run.py signal memory     # a selection (signal orphans startup memory http)
    python bench/run.py --json out.json   # also save the figures
    python bench/run.py --runs signal=50  # fewer runs (a quick look; the targets assume the defaults)

Prints each benchmark's figures as it goes, then one compact table, and exits 1 when a target
is missed (2 when a benchmark could not run). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_http
import bench_keystore
import bench_keystore_native
import bench_memory
import bench_orphans
import bench_signal
import bench_startup
from harness import Context, Helper, Result

BENCHMARKS = {
    m.NAME: m
    for m in (
        bench_signal,
        bench_orphans,
        bench_startup,
        bench_memory,
        bench_http,
        bench_keystore,
        bench_keystore_native,
    )
}
NEEDS_ROOT = {"signal", "orphans"}  # PID 1 in a new pid namespace
COLUMNS = ("espm", "tini", "dumb-init", "supervisord", "python", "original", "tool")


def _fmt(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(results: list[Result]) -> str:
    # Only the columns that have a figure in one of these results.
    columns = [c for c in COLUMNS if any(c in row.values for res in results for row in res.rows)]
    columns = columns or ["espm"]
    head = ["benchmark", "figure", *columns, "target", "result"]
    rows: list[list[str]] = []
    for res in results:
        if res.error is not None:
            rows.append([res.name, "ERROR", *("-" for _ in columns), res.error.splitlines()[0][:40], "ERROR"])
            continue
        for row in res.rows:
            figure = f"{row.metric} ({row.unit})" if row.unit else row.metric
            verdict = "" if row.passed is None else ("PASS" if row.passed else "MISS")
            rows.append([res.name, figure, *(_fmt(row.values.get(c)) for c in columns), row.target, verdict])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    numeric = set(range(2, 2 + len(columns)))

    def line(cells: list[str]) -> str:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _runs(specs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for spec in specs:
        name, _, count = spec.partition("=")
        if name not in BENCHMARKS or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--runs: expected NAME=N with NAME in {', '.join(BENCHMARKS)}, got {spec!r}")
        out[name] = int(count)
    return out


def precompile() -> None:
    """Byte-compile espm as `pip install` does, so start-up is measured as installed.

    An editable install has no .pyc until Python writes them, and a PYTHONDONTWRITEBYTECODE=1
    environment (this machine's) never does: every start would compile espm from source.
    """
    import compileall

    import espm

    compileall.compile_dir(str(Path(espm.__file__).parent), quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmarks of espm against tini, dumb-init and supervisord."
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--json", metavar="FILE", help="save the figures and details as JSON")
    parser.add_argument(
        "--runs", action="append", default=[], metavar="NAME=N", help="override a benchmark's run count"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    precompile()
    ctx = Context(helper=Helper(), runs=_runs(args.runs))

    started = time.monotonic()
    results: list[Result] = []
    try:
        for name in names:
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            if name in NEEDS_ROOT and os.geteuid() != 0:
                res = Result(name, error="needs root (unshare --pid) to run the managers as PID 1")
            else:
                try:
                    res = BENCHMARKS[name].run(ctx)
                except Exception as err:  # report it, go on with the others
                    traceback.print_exc()
                    res = Result(name, error=f"{type(err).__name__}: {err}")
            res.seconds = time.monotonic() - t0
            results.append(res)
            print(table([res]))
            for note in res.notes:
                print(f"  note: {note}")
            print(f"  ({res.seconds:.1f} s)\n", flush=True)
    finally:
        ctx.helper.close()
    total = time.monotonic() - started

    print("== summary")
    print(table(results))
    missed = [r.name for r in results if not r.passed]
    print(
        f"\n{len(results) - len(missed)}/{len(results)} benchmarks met their targets; "
        f"total {total:.1f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )

    if args.json:
        doc = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": {
                "machine": platform.machine(),
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "loadavg": os.getloadavg(),
            },
            "seconds": total,
            "results": [
                {
                    "name": r.name,
                    "passed": r.passed,
                    "error": r.error,
                    "seconds": r.seconds,
                    "rows": [vars(row) for row in r.rows],
                    "details": r.details,
                    "notes": r.notes,
                }
                for r in results
            ],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
            f.write("\n")
        print(f"figures saved to {args.json}")
    if any(r.error for r in results):
        return 2
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
