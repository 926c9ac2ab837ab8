"""The paths that keep the running manager small do what the modules they replace did."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from espm import cli
from espm.config import VARIABLES
from espm.keystore import crypto, files


def _argparse_flags(options: list[str]) -> dict[str, str | None]:
    args = cli._run_parser().parse_args(options)
    return {v.name: getattr(args, v.dest) for v in VARIABLES}


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--pm-http-port=9000"],
        ["--pm-http-port", "9000", "--pm-tls=true"],
        ["--pm-proc-cmd", "sleep 1", "--pm-proc-cmd=sleep 2"],  # the last one wins
        ["--pm-log-level="],  # empty, as given
        ["--pm-proc-cmd=a=b"],  # split at the first =
    ],
)
def test_plain_flags_read_as_argparse_reads_them(options: list[str]) -> None:
    assert cli._plain_flags(options) == _argparse_flags(options)


@pytest.mark.parametrize(
    "options",
    [
        ["--pm-http-p=9000"],  # an abbreviation: argparse accepts it
        ["--pm-http-port"],  # no value
        ["--pm-http-port", "--pm-tls=true"],  # a flag where the value should be
        ["--pm-http-port", "-1"],
        ["-h"],
        ["--version"],
        ["--pm-htp-port=1"],  # a mistake: argparse names the closest flag
        ["sleep"],
    ],
)
def test_anything_else_is_left_to_argparse(options: list[str]) -> None:
    assert cli._plain_flags(options) is None


def test_an_abbreviated_flag_still_works_through_argparse() -> None:
    config = cli.configure(["--pm-http-p=9001", "--", "true"], {"PM_KEYSTORE_UPDATER": "false"})
    assert config.http.port == 9001


def test_a_work_folder_is_removed_without_following_its_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "keep").write_bytes(b"keep")
    (outside / "file").write_bytes(b"keep")
    work = tmp_path / "work"
    work.mkdir()
    held = files.LockedFolder(work, "espm-work-")
    (held.path / "tmp" / "sub").mkdir(parents=True)
    (held.path / "tmp" / "sub" / "value").write_bytes(b"x")
    (held.path / "to-dir").symlink_to(outside)
    (held.path / "tmp" / "to-file").symlink_to(outside / "file")
    held.remove()
    assert os.listdir(work) == []
    assert (outside / "deep" / "keep").read_bytes() == b"keep"
    assert (outside / "file").read_bytes() == b"keep"


def test_sha256_and_pbkdf2_are_hashlibs() -> None:
    for data in (b"", b"abc", os.urandom(100_000)):
        assert crypto.sha256(data) == hashlib.sha256(data).digest()
    assert crypto.pbkdf2_sha512(b"", b"salt", 3, 64) == hashlib.pbkdf2_hmac("sha512", b"", b"salt", 3, 64)
    with pytest.raises(ValueError, match="at least 1 round"):
        crypto.pbkdf2_sha512(b"p", b"s", 0, 32)


TRIM = """
from espm.system import heap
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
chunks = [bytes(1000) for _ in range(40_000)]  # 40 MB on the C heap (malloc: over 512 bytes each)
last = chunks[-1]  # kept: the heap's top stays in use, so free() alone gives nothing back
del chunks
before = rss()
heap.trim()
print(before - rss())
"""


def test_trim_gives_the_heaps_free_pages_back() -> None:
    out = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 30_000, out.stdout  # KiB
