"""inotify(7) through ctypes: a non-blocking fd that becomes readable when a folder changes."""

from __future__ import annotations

import os
from pathlib import Path

from espm.system.libc import checked, libc

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What a Secret update does to the folder: Kubernetes renames `..data_tmp` over `..data`
# (IN_MOVED_TO); a hand-edited folder shows creates, writes and deletes.
FOLDER_EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED


class FolderWatch:
    """Watches one folder; `read()` drains the events and says whether the folder went away."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd = checked(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        self._wd = -1
        self.rewatch()

    def rewatch(self) -> bool:
        """(Re)start watching the folder; False when it does not exist (yet)."""
        self._wd = libc.inotify_add_watch(self.fd, os.fsencode(self.folder), FOLDER_EVENTS)
        return self._wd >= 0

    @property
    def watching(self) -> bool:
        return self._wd >= 0

    def read(self, complete: bytes = b"") -> bool:
        """Drain pending events; True if `complete` was renamed or created in the folder.

        Marks the watch gone when the folder itself was removed or moved.
        """
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset + 16 <= len(data):
                wd = int.from_bytes(data[offset : offset + 4], "little", signed=True)
                mask = int.from_bytes(data[offset + 4 : offset + 8], "little")
                length = int.from_bytes(data[offset + 12 : offset + 16], "little")
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                if wd == self._wd and mask & _GONE:
                    self._wd = -1
                if complete and name == complete and mask & (IN_MOVED_TO | IN_CREATE):
                    seen = True
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)
