"""Work folders beside the keystore, owned by a lock: removed only once their holder is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from espm.keystore.files import LockedFolder, remove_abandoned

HOLDER = """
import sys, time
from pathlib import Path
from espm.keystore.files import LockedFolder
folder = LockedFolder(Path(sys.argv[1]), ".espm-keystore-")
print(folder.path.name, flush=True)
time.sleep(60)
"""


def test_a_folder_is_removed_only_once_its_holder_is_gone(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        name = holder.stdout.readline().strip()
        assert name.startswith(".espm-keystore-")
        assert remove_abandoned(tmp_path, ".espm-keystore-") == []  # held: a live manager's
        assert (tmp_path / name).is_dir()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert remove_abandoned(tmp_path, ".espm-keystore-") == [name]  # the lock died with it
        assert not (tmp_path / name).exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_folder_made_here_is_ours_until_removed(tmp_path: Path) -> None:
    folder = LockedFolder(tmp_path, ".espm-keystore-")
    (folder.path / "copy").write_bytes(b"x")
    assert remove_abandoned(tmp_path, ".espm-keystore-") == []
    folder.remove()
    assert os.listdir(tmp_path) == []
