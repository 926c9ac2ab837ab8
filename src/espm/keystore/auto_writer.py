"""KEYSTORE_WRITER=auto: native when the file's format is known, the tool otherwise.

The tool is kept for what only it knows: a file whose format espm cannot read (too old, too new,
not a keystore as far as format.py can tell), and creating a missing keystore (the tool writes
its own version's format). A wrong password is not a reason to run the tool: it would fail too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from espm.keystore import format as ksf
from espm.keystore.native_writer import NativeWriter, UnreadableKeystore
from espm.keystore.tool_writer import ToolWriter
from espm.keystore.writer import KeystoreWriter

log = logging.getLogger("espm.keystore")


class AutoWriter:
    """Chooses per write; `name` says which one wrote (or tried) last."""

    def __init__(self, native: NativeWriter, tool: ToolWriter) -> None:
        self.native = native
        self.tool = tool
        self.name = "native"
        self._why = ""

    def choose(self, path: Path) -> tuple[KeystoreWriter, str]:
        """The writer for the file at `path` now, and why when it is the tool."""
        try:
            with path.open("rb") as f:
                head = f.read(ksf.HEADER_LENGTH)
        except FileNotFoundError:
            return self.tool, "no keystore yet: the tool creates it in its own format"
        except OSError:
            return self.native, ""  # the native writer says what is wrong with it
        try:
            ksf.peek(head)
        except ksf.KeystoreFormatError as err:
            return self.tool, f"a format the native writer does not know ({err})"
        return self.native, ""

    async def write(self, values: Mapping[str, bytes], add: Sequence[str], remove: Sequence[str]) -> bool:
        writer, why = self.choose(self.native.path)
        if writer.name != self.name or why != self._why:
            if why:
                log.info("keystore written by the tool: %s", why)
            else:
                log.info("keystore written natively (format known)")
        self.name, self._why = writer.name, why
        try:
            return await writer.write(values, add, remove)
        except UnreadableKeystore as err:
            # The header looked known, the rest did not parse: the file is untouched; the tool
            # gets its turn (and says what it thinks of the file).
            log.warning("the native writer cannot read the keystore (%s): trying the tool", err)
            self.name, self._why = self.tool.name, str(err)
            return await self.tool.write(values, add, remove)
