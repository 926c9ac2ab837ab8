"""A Secret volume written the way the kubelet's AtomicWriter writes it (for tests, demo, benchmarks)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

DATA = "..data"


class SecretVolume:
    """A folder of settings: a timestamped folder per version, `..data` pointing at the current one,
    and a visible link per name through `..data`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._serial = 0

    def visible(self) -> set[str]:
        return {name for name in os.listdir(self.path) if not name.startswith(".")}

    def write(self, values: Mapping[str, bytes | str], links: bool = True) -> int:
        """Replace the whole content: a new folder, then `..data` swapped by one rename.

        Returns CLOCK_MONOTONIC (ns) taken just before the swap. With `links=False` the visible
        links are left as the swap found them (the moment between the swap and their repair).
        """
        self._serial += 1
        stamp = f"..{dt.datetime.now(dt.UTC):%Y_%m_%d_%H_%M_%S}.{self._serial:09d}"
        folder = self.path / stamp
        folder.mkdir()
        for name, value in values.items():
            (folder / name).write_bytes(value.encode() if isinstance(value, str) else value)
        try:
            old: str | None = os.readlink(self.path / DATA)
        except FileNotFoundError:
            old = None
        tmp_link = self.path / f"{DATA}_tmp"
        tmp_link.symlink_to(stamp)
        swapped_at = time.monotonic_ns()
        os.rename(tmp_link, self.path / DATA)
        if not links:
            return swapped_at
        visible = self.visible()
        for name in values:
            if name not in visible:
                (self.path / name).symlink_to(f"{DATA}/{name}")
        for name in visible - set(values):
            (self.path / name).unlink()
        if old is not None:
            shutil.rmtree(self.path / old, ignore_errors=True)
        return swapped_at
