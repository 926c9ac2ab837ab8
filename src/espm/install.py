"""`espm install DIR`: copy the standalone espm that runs this command into DIR (an init container's job)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from espm import __version__

EXIT_NOT_FROZEN = 2
EXIT_FAILED = 1


class InstallError(Exception):
    """The copy could not be made; the message names the path and the reason."""


def frozen_layout() -> tuple[Path, Path | None] | None:
    """The running executable and the folder it needs beside it, or None when not frozen.

    A PyInstaller one-folder build keeps its contents in a folder beside the executable
    (`espm-lib`), which must travel with it; a one-file build unpacks into a temporary folder
    at each start, so the executable alone is the whole program.
    """
    if not getattr(sys, "frozen", False):
        return None
    exe = Path(sys.executable).resolve()
    contents = Path(getattr(sys, "_MEIPASS", exe.parent)).resolve()
    if contents.parent == exe.parent and contents != exe.parent:
        return exe, contents
    return exe, None


def install(exe: Path, contents: Path | None, dest: Path) -> Path:
    """Copy exe (and contents, under the same name) into dest; returns the installed executable.

    The folder goes in before the executable and each is renamed into place from a copy in
    dest, so an existing install is replaced whole and the executable never appears before
    what it needs. Running it again over the same files is harmless.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InstallError(f"cannot create {dest}: {err.strerror}") from None
    if not dest.is_dir():
        raise InstallError(f"{dest} is not a folder")
    target = dest / exe.name
    if target.exists() and target.samefile(exe):
        return target  # installing onto itself: already there
    try:
        if contents is not None:
            _replace_tree(contents, dest / contents.name)
        partial = dest / f".{exe.name}.partial"
        shutil.copy2(exe, partial)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    except OSError as err:
        where = err.filename or dest
        raise InstallError(f"cannot copy into {dest}: {where}: {err.strerror}") from None
    return target


def _replace_tree(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    for leftover in (partial, old):  # from an install that was killed half-way
        if leftover.exists():
            shutil.rmtree(leftover)
    shutil.copytree(source, partial, symlinks=True)
    if target.exists():
        os.rename(target, old)
    os.rename(partial, target)
    if old.exists():
        shutil.rmtree(old)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="espm install",
        description="Copy this standalone espm into DIR (for an init container that fills a "
        "shared volume): DIR/espm, and DIR/espm-lib when the build has one.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="the folder to install into")
    args = parser.parse_args(argv)
    layout = frozen_layout()
    if layout is None:
        print(
            f"espm install: this espm runs from a Python installation ({sys.executable}), "
            "not from the standalone build, so there is no executable to copy. "
            "Build one with tools/build-standalone, or run `espm install` from the image.",
            file=sys.stderr,
        )
        return EXIT_NOT_FROZEN
    exe, contents = layout
    try:
        target = install(exe, contents, args.dir)
    except InstallError as err:
        print(f"espm install: {err}", file=sys.stderr)
        return EXIT_FAILED
    beside = f", with {args.dir / contents.name}" if contents is not None else ""
    print(f"espm {__version__} installed: {target}{beside}")
    return 0
