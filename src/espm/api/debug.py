"""/debug/vars, /debug/pprof/ and /metrics: loaded only when one of them is turned on."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from espm.api.routes import Request, Response, Route

if TYPE_CHECKING:
    from espm.api.port import Control
    from espm.config import HttpConfig

MAX_PROFILE_SECONDS = 60
TEXT = "text/plain; charset=utf-8"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of the manager, in bytes."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


def _runtime() -> dict[str, int | None]:
    """What a leak would grow: open descriptors, OS threads and asyncio tasks of the manager."""

    def count(folder: str) -> int | None:
        try:
            return len(os.listdir(folder))
        except OSError:
            return None

    return {
        "open_fds": count("/proc/self/fd"),
        "threads": count("/proc/self/task"),
        "asyncio_tasks": len(asyncio.all_tasks()),
    }


def _cmdline() -> list[str]:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return list(sys.argv)


def prometheus_number(value: float) -> str:
    """A sample value at full precision: integers as integers, others as Python's shortest repr.

    `%g` keeps 6 digits: a start time of 1764612551.5 would print as 1.76461e+09 (off by up to
    5,000 s) and a memory size of 25,165,824 bytes as 2.51658e+07.
    """
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class DebugEndpoints:
    """The handlers of the optional endpoints, reading the manager's counters through the port."""

    def __init__(self, control: Control, name: str, profiler: bool = False) -> None:
        self.control = control
        self.name = name
        self.started = time.time()
        self._profiling = False
        if profiler:
            import tracemalloc

            # Allocations are only seen from the moment tracing starts: start it with the API.
            tracemalloc.start(10)

    def routes(self, http: HttpConfig) -> list[Route]:
        """The endpoints the configuration turns on."""
        routes: list[Route] = []
        if http.exp_vars:
            routes.append(Route("/debug/vars", "GET", self.vars))
        if http.metrics:
            routes.append(Route("/metrics", "GET", self.metrics))
        if http.profiler:
            routes += [
                Route("/debug/pprof/", "GET", self.pprof_index),
                Route("/debug/pprof/profile", "GET", self.pprof_profile),
                Route("/debug/pprof/heap", "GET", self.pprof_heap),
                Route("/debug/pprof/tasks", "GET", self.pprof_tasks),
            ]
        return routes

    def vars(self, request: Request) -> Response:
        memory = _proc_status()
        doc: dict[str, Any] = {
            "cmdline": _cmdline(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "memory": {"rss_bytes": memory.get("VmRSS"), "peak_rss_bytes": memory.get("VmHWM")},
            "gc": {
                "counts": list(gc.get_count()),
                "collections": [s["collections"] for s in gc.get_stats()],
            },
            "process": self.control.status(),
            "counters": self.control.counters(),
            "runtime": _runtime(),
        }
        keystore = self.control.keystore_status()
        if keystore is not None:
            doc["keystore"] = keystore
        return Response.json(200, doc)

    def metrics(self, request: Request) -> Response:
        control = self.control
        name = self.name
        lines: list[str] = []

        def metric(metric_name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {metric_name} {help_text}")
            lines.append(f"# TYPE {metric_name} {kind}")
            for labels, value in samples:
                lines.append(f"{metric_name}{labels} {prometheus_number(value)}")

        from espm.supervisor.state import ProcessState

        metric(
            "espm_process_state",
            "gauge",
            "1 for the managed process's current state.",
            [
                (f'{{name="{name}",state="{s.value}"}}', 1.0 if control.state is s else 0.0)
                for s in ProcessState
            ],
        )
        metric(
            "espm_process_up",
            "gauge",
            "1 while the managed process runs.",
            [(f'{{name="{name}"}}', 1.0 if control.running else 0.0)],
        )
        counters = control.counters()
        for key, help_text in (
            ("process_starts", "Times the managed process was started."),
            ("signals_forwarded", "Signals forwarded to the process group."),
            ("zombies_reaped", "Orphaned processes reaped."),
            ("http_requests", "HTTP requests served."),
            ("keystore_updates", "Keystore updates done."),
            ("keystore_update_failures", "Keystore updates that failed."),
            ("keystore_reloads", "Successful reloads of secure settings."),
        ):
            metric(f"espm_{key}_total", "counter", help_text, [("", float(counters[key]))])
        memory = _proc_status()
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the manager.",
            [("", float(memory.get("VmRSS", 0)))],
        )
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the manager (Unix time).",
            [("", self.started)],
        )
        return Response(200, ("\n".join(lines) + "\n").encode(), content_type=PROMETHEUS)

    # -- pprof ------------------------------------------------------------------------------

    def pprof_index(self, request: Request) -> Response:
        return Response.json(
            200,
            {
                "profiles": {
                    "profile": "CPU profile of the manager over ?seconds=N (default 10, max 60), as text",
                    "heap": "top allocation sites since the API started (tracemalloc)",
                    "tasks": "stacks of every asyncio task and thread",
                },
            },
        )

    def pprof_heap(self, request: Request) -> Response:
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("lineno")[:30]
        current, peak = tracemalloc.get_traced_memory()
        out = io.StringIO()
        out.write(f"traced: {current} bytes now, {peak} bytes at peak\n")
        for stat in stats:
            out.write(f"{stat.size:>10} B {stat.count:>7} blocks  {stat.traceback.format()[-1].strip()}\n")
        return Response(200, out.getvalue().encode(), content_type=TEXT)

    def pprof_tasks(self, request: Request) -> Response:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            out.write(f"task {task.get_name()} {task.get_coro()!r}\n")
            for frame in task.get_stack():
                out.write("".join(traceback.format_stack(frame, limit=1)))
            out.write("\n")
        for thread_id, frame in sys._current_frames().items():
            out.write(f"thread {thread_id}\n{''.join(traceback.format_stack(frame))}\n")
        return Response(200, out.getvalue().encode(), content_type=TEXT)

    def pprof_profile(self, request: Request) -> Response | Any:
        try:
            seconds = float(request.query.get("seconds", ["10"])[0])
        except ValueError:
            return Response.error(400, "seconds must be a number")
        if not 0 < seconds <= MAX_PROFILE_SECONDS:
            return Response.error(400, f"seconds must be above 0 and at most {MAX_PROFILE_SECONDS}")
        if self._profiling:
            return Response.error(409, "a profile is already being taken")
        return self._take_profile(seconds)

    async def _take_profile(self, seconds: float) -> Response:
        import cProfile
        import pstats

        self._profiling = True
        profiler = cProfile.Profile()
        try:
            # Everything the loop runs meanwhile (one thread) is what gets profiled.
            profiler.enable()
            await asyncio.sleep(seconds)
        finally:
            profiler.disable()
            self._profiling = False
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
        return Response(200, out.getvalue().encode(), content_type=TEXT)
