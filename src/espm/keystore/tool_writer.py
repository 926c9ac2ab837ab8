"""The keystore written by `elasticsearch-keystore`, on a copy, in as few runs as the tool allows.

Rules of this module:
- The tool never touches KEYSTORE_PATH: it runs with ES_PATH_CONF set to a fresh work folder
  beside it (owned through a lock, see files.py) holding a copy of the keystore; the result is
  installed by a rename, and a failure leaves the old file. The folder goes after every update.
- Values reach the tool in memfds (values.py), never through files on a shared filesystem.
- One `add-file` run with every pair (7.7+) and one `remove` run, `--` before the names. Whether
  the tool takes several pairs is known from KEYSTORE_ES_VERSION, from the version Elasticsearch
  reports, or from a probe with fixed names: never from a run the input could have made fail.
"""

from __future__ import annotations

import logging
import re
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path

from espm.keystore.files import LockedFolder
from espm.keystore.tool import EXIT_USAGE, KeystoreTool, ToolRun
from espm.keystore.values import value_files
from espm.keystore.writer import KEYSTORE_NAME, UpdateError, current_stat, describe_os_error, install

log = logging.getLogger("espm.keystore")

WORK_PREFIX = ".espm-keystore-"
# Inside a work folder: the tool's ES_TMPDIR, and value files where memfds are not to be had.
TMP_FOLDER = "tmp"
VALUES_FOLDER = "values"
EXIT_NOT_IN_KEYSTORE = 78
# Fixed names for the probe that asks the tool whether it takes several pairs per run.
PROBE_PAIRS = ("espm.probe.first", "espm.probe.second")


def batches_pairs(version: str) -> bool:
    """True when the tool takes several add-file pairs in one run (7.7 and later)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        return True
    return (int(match.group(1)), int(match.group(2))) >= (7, 7)


class ToolWriter:
    """Writes the keystore at `path` through `tool`."""

    name = "tool"

    def __init__(self, path: Path, tool: KeystoreTool, es_version: str = "") -> None:
        self.path = path
        self.tool = tool
        # True: several pairs per run; False: one (a 6.x tool); None: not known yet.
        self.batch: bool | None = batches_pairs(es_version) if es_version else None

    def learn_version(self, version: str) -> None:
        """The version Elasticsearch reports; what the tool itself showed (a probe) outranks it."""
        if self.batch is None:
            self.batch = batches_pairs(version)

    async def write(self, values: Mapping[str, bytes], add: Sequence[str], remove: Sequence[str]) -> bool:
        parent = self.path.parent
        try:
            work = LockedFolder(parent, WORK_PREFIX)
        except OSError as err:
            raise UpdateError(f"cannot create a work folder in {parent}: {err.strerror or err}") from None
        try:
            conf = work.path
            target = conf / KEYSTORE_NAME
            # The JVM's own temporary files (6.8 leaves a folder behind on every run) go here.
            (conf / TMP_FOLDER).mkdir(mode=0o700)
            old = current_stat(self.path)
            if old is not None:
                import shutil  # here: with bz2 and lzma, 0.6 MiB that only this path needs

                shutil.copy2(self.path, target)
            if add:
                await self._add_files(values, list(add), conf)
            if remove and target.is_file():
                await self._remove(list(remove), conf)
            if not target.is_file():
                if old is None and not add:
                    return False  # no keystore, and nothing to put in one: nothing to remove either
                raise UpdateError("the tool reported success but wrote no keystore")
            install(target, self.path, old)
            return True
        except OSError as err:
            raise UpdateError(describe_os_error(err)) from None
        finally:
            work.remove()

    async def _run(self, args: list[str], conf: Path, pass_fds: Sequence[int] = ()) -> ToolRun:
        return await self.tool.run(args, conf, tmp_dir=conf / TMP_FOLDER, pass_fds=pass_fds)

    async def _add_files(self, values: Mapping[str, bytes], names: list[str], conf: Path) -> None:
        if self.batch is not False and len(names) > 1:
            for chunk in _chunks(names, _descriptor_budget()):
                run = await self._add_run(values, chunk, conf)
                if run.ok:
                    self.batch = True
                    continue
                if not (run.exit_code == EXIT_USAGE and self.batch is None):
                    raise UpdateError(run.describe())
                # A usage error: a tool older than 7.7 (one pair per run), or something in this
                # input. Only a run whose input is fixed tells the two apart; the input never decides.
                if await self._probe_batches(conf) is not False:
                    raise UpdateError(run.describe())
                log.info("the keystore tool takes one setting per run (before 7.7): adding one by one")
                self.batch = False
                break
            else:
                return
        for name in names:
            _check(await self._add_run(values, [name], conf))

    async def _add_run(self, values: Mapping[str, bytes], names: list[str], conf: Path) -> ToolRun:
        """One `add-file` run for `names`; `--` ends the tool's options, so whatever a name looks
        like it is never read as one (names beginning with `-` are left out before this: a belt)."""
        with value_files(values, names, conf / VALUES_FOLDER) as (pairs, fds):
            return await self._run(["add-file", "-f", "--", *_flat(pairs)], conf, fds)

    async def _probe_batches(self, conf: Path) -> bool | None:
        """Whether the tool takes several add-file pairs, asked with fixed names in a scratch folder.

        None when the probe itself failed otherwise: nothing is learned then.
        """
        folder = conf / "probe"
        folder.mkdir(mode=0o700)
        value = folder / "value"
        value.write_bytes(b"")
        args = ["add-file", "-f", "--", *_flat([(n, str(value)) for n in PROBE_PAIRS])]
        run = await self.tool.run(args, folder, tmp_dir=conf / TMP_FOLDER)
        if run.ok:
            self.batch = True
            return True
        if run.exit_code == EXIT_USAGE:
            return False
        log.warning(
            "cannot tell whether the keystore tool takes several settings per run: %s", run.describe()
        )
        return None

    async def _remove(self, names: list[str], conf: Path) -> None:
        run = await self._run(["remove", "--", *names], conf)
        if run.ok:
            return
        if run.exit_code != EXIT_NOT_IN_KEYSTORE:
            raise UpdateError(run.describe())
        # Some were already gone (the keystore was changed behind our back): remove the rest.
        listing = _check(await self._run(["list"], conf))
        present = set(listing.stdout.split())
        rest = [n for n in names if n in present]
        if rest:
            _check(await self._run(["remove", "--", *rest], conf))


def _check(run: ToolRun) -> ToolRun:
    if not run.ok:
        raise UpdateError(run.describe())
    return run


def _flat(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """`NAME PATH NAME PATH ...`, as add-file takes them."""
    return [part for pair in pairs for part in pair]


def _chunks(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]


def _descriptor_budget() -> int:
    """How many value descriptors one run may carry: half of what the soft limit leaves."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(1, soft // 2 - 64)
