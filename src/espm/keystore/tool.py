"""Runs elasticsearch-keystore: non-interactive, bounded in time, in as few runs as it allows.

The tool is started with `posix_spawn` in its own process group (a timeout kills the JVM and
whatever it started), stdin on /dev/null so a question it should not ask ends it instead of
hanging, and its exit status comes from the manager's reaper: no other wait is ever made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from espm.config import PRIVATE_VARIABLES
from espm.supervisor.reaper import Reaper
from espm.supervisor.signals import FORWARDED, StartupSignals

log = logging.getLogger("espm.keystore.tool")

EXIT_USAGE = 64
EXIT_CONFIG = 78
OUTPUT_CAP = 64 * 1024
OUTPUT_GRACE = 2.0


@dataclass(frozen=True)
class ToolRun:
    """What one run of the tool did."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def error_line(self) -> str:
        """The tool's last `ERROR:` line, else its last line on stderr (a Java stack trace)."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        for line in reversed(lines):
            if line.startswith("ERROR:"):
                return line
        for line in lines:
            if "Exception" in line:
                return line
        return lines[-1] if lines else ""

    def describe(self) -> str:
        command = self.argv[1] if len(self.argv) > 1 else self.argv[0]
        if self.timed_out:
            return f"elasticsearch-keystore {command} did not finish in time and was killed"
        text = f"elasticsearch-keystore {command} exited with status {self.exit_code}"
        line = self.error_line()
        if self.exit_code == EXIT_CONFIG and "changing the file owner" in line:
            # The tool's owner check (7.x, 8.x): it works on espm's own copy, made by espm's user,
            # so it can only fire when KEYSTORE_BINARY runs the tool as another user.
            line += (
                f" (the tool refuses to replace a keystore owned by another user: it works on a copy"
                f" owned by espm's user, uid {os.geteuid()}; KEYSTORE_BINARY must not switch users)"
            )
        return f"{text}: {line}" if line else text


class KeystoreTool:
    """The `elasticsearch-keystore` executable, run against a given ES_PATH_CONF folder."""

    def __init__(
        self, binary: Path, timeout: float, reaper: Reaper, startup: StartupSignals | None = None
    ) -> None:
        self.binary = binary
        self.timeout = timeout
        self.runs = 0
        self._reaper = reaper
        self._mask = startup.mask if startup else frozenset()
        self._ignored = startup.ignored if startup else frozenset()

    async def run(
        self,
        args: Sequence[str],
        conf_dir: Path,
        *,
        tmp_dir: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> ToolRun:
        """Run the tool with `args` and ES_PATH_CONF=`conf_dir`.

        `tmp_dir` becomes ES_TMPDIR (a folder the caller owns and removes: 6.8 leaves one of its
        own in /tmp on every run otherwise); `pass_fds` are inherited at their own numbers.
        """
        argv = (str(self.binary), *args)
        # espm's own variables stay with espm, as for the managed process: the password, and the
        # `*_FILE` ones that the image's scripts around the tool may turn into values.
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_VARIABLES}
        env["ES_PATH_CONF"] = str(conf_dir)
        if tmp_dir is not None:
            env["ES_TMPDIR"] = str(tmp_dir)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.runs += 1
        # Inheritable only for the spawn: everything runs on this one thread, so no other child
        # (the managed process started meanwhile) can be spawned while they are.
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        try:
            pid = os.posix_spawn(
                argv[0],
                list(argv),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, null, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setpgroup=0,
                setsigmask=self._mask,
                setsigdef=[s for s in FORWARDED if s not in self._ignored],
            )
            # Registered before the loop gets a turn: the status cannot be reaped unseen.
            exited = self._reaper.wait(pid)
        except BaseException:
            # Not started (e.g. the binary went away): nobody will read these ends either.
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in pass_fds:
                os.set_inheritable(fd, False)
            os.close(out_w)
            os.close(err_w)
            os.close(null)
        reading = asyncio.ensure_future(asyncio.gather(_read_all(out_r), _read_all(err_r)))
        timed_out = False
        try:
            status = await asyncio.wait_for(asyncio.shield(exited), self.timeout)
        except TimeoutError:
            timed_out = True
            log.warning("keystore tool timed out after %ss: killing it", self.timeout)
            _kill_group(pid)  # not reaped yet, so the group id is still its own
            status = await exited
        except asyncio.CancelledError:
            _kill_group(pid)
            reading.cancel()
            # Collected, so that asyncio has no unretrieved exception to complain about.
            await asyncio.gather(reading, return_exceptions=True)
            raise
        # Something the tool left running in its group may hold the pipes open: while one does,
        # the group id stays in use, so killing it cannot hit a stranger.
        done, _ = await asyncio.wait([reading], timeout=OUTPUT_GRACE)
        if not done:
            _kill_group(pid)
        stdout, stderr = await reading
        return ToolRun(argv, os.waitstatus_to_exitcode(status), stdout, stderr, timed_out)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass  # ESRCH: nothing is left of it


async def _read_all(fd: int) -> str:
    """Everything written to the pipe until EOF, keeping the last OUTPUT_CAP bytes."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            if not done.done():
                done.set_result(None)
            return
        chunks.extend(data)
        if len(chunks) > OUTPUT_CAP:
            del chunks[: len(chunks) - OUTPUT_CAP]

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return chunks.decode("utf-8", "replace")
