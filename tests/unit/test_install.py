"""`espm install DIR`: the copy an init container makes, on real files (frozen: tools/test-standalone)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from espm.install import InstallError, install


def _build(tmp_path: Path, marker: str = "v1") -> tuple[Path, Path]:
    """A stand-in one-folder build: an executable that only works with its folder beside it."""
    dist = tmp_path / "dist"
    lib = dist / "espm-lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "sub" / "BUILDINFO").write_text(marker + "\n")
    (lib / "libfake.so.1").symlink_to("sub/BUILDINFO")
    exe = dist / "espm"
    exe.write_text('#!/bin/sh\nexec cat "$(dirname "$0")/espm-lib/libfake.so.1"\n')
    exe.chmod(0o700)
    return exe, lib


def _run(exe: Path) -> str:
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


def test_the_installed_copy_runs_with_its_folder(tmp_path: Path) -> None:
    exe, lib = _build(tmp_path)
    dest = tmp_path / "shared" / "bin"
    target = install(exe, lib, dest)
    assert target == dest / "espm"
    assert _run(target) == "v1\n"
    assert (dest / "espm-lib" / "libfake.so.1").is_symlink()  # links stay links
    # Readable and runnable by Elasticsearch's uid 1000 when root installed it.
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert sorted(p.name for p in dest.iterdir()) == ["espm", "espm-lib"]  # no leftovers


def test_reinstall_replaces_the_folder_whole(tmp_path: Path) -> None:
    exe, lib = _build(tmp_path, "old")
    dest = tmp_path / "shared"
    install(exe, lib, dest)
    (dest / "espm-lib" / "stale.so").write_text("from the old build")
    (lib / "sub" / "BUILDINFO").write_text("new\n")
    install(exe, lib, dest)
    assert _run(dest / "espm") == "new\n"
    assert not (dest / "espm-lib" / "stale.so").exists()


def test_leftovers_of_a_killed_install_are_cleared(tmp_path: Path) -> None:
    exe, lib = _build(tmp_path)
    dest = tmp_path / "shared"
    (dest / ".espm-lib.partial").mkdir(parents=True)
    (dest / ".espm-lib.partial" / "half").write_text("x")
    install(exe, lib, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["espm", "espm-lib"]


def test_one_file_build_copies_the_executable_alone(tmp_path: Path) -> None:
    exe, _ = _build(tmp_path)
    dest = tmp_path / "shared"
    install(exe, None, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["espm"]


def test_installing_onto_itself_changes_nothing(tmp_path: Path) -> None:
    exe, lib = _build(tmp_path)
    assert install(exe, lib, exe.parent) == exe
    assert _run(exe) == "v1\n"


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    exe, lib = _build(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(InstallError, match=r"not-a-folder"):
        install(exe, lib, blocker)


def test_a_folder_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    exe, lib = _build(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(InstallError, match=r"cannot create .*file/shared: Not a directory"):
        install(exe, lib, tmp_path / "file" / "shared")


def test_refused_when_not_frozen(tmp_path: Path) -> None:
    dest = tmp_path / "shared"
    done = subprocess.run(
        [sys.executable, "-m", "espm", "install", str(dest)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "not from the standalone build" in done.stderr
    assert "tools/build-standalone" in done.stderr
    assert not dest.exists()
