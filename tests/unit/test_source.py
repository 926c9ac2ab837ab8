"""Reading the Secret directory: Kubernetes' `..data` layout, hidden names, exact bytes."""

from __future__ import annotations

import os

import pytest

from espm.keystore.source import SourceError, read_snapshot
from espm.standins.secret import SecretVolume


def test_values_are_exact_bytes_and_hidden_names_are_skipped(tmp_path) -> None:
    SecretVolume(tmp_path).write({"a.b": b"\x00\xff\n", "empty": b"", "bad name": b"x"})
    (tmp_path / ".hidden").write_bytes(b"x")
    snap = read_snapshot(tmp_path)
    assert snap.values == {"a.b": b"\x00\xff\n", "empty": b""}
    assert snap.invalid == ("bad name",)


def test_the_new_version_is_read_as_soon_as_data_is_swapped(tmp_path) -> None:
    volume = SecretVolume(tmp_path)
    volume.write({"old": b"1", "kept": b"1"})
    before = read_snapshot(tmp_path)
    # The swap is done, the visible links are not fixed yet: `new` has no link, `old` dangles.
    volume.write({"kept": b"2", "new": b"2"}, links=False)
    after = read_snapshot(tmp_path)
    assert after.values == {"kept": b"2", "new": b"2"}
    assert after.fingerprint() != before.fingerprint()


def test_a_plain_folder_is_read_as_it_is(tmp_path) -> None:
    (tmp_path / "x.y").write_bytes(b"v")
    (tmp_path / "sub").mkdir()
    os.symlink("missing", tmp_path / "dangling")
    assert read_snapshot(tmp_path).values == {"x.y": b"v"}


def test_fingerprint_changes_with_names_and_values_only(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    first = read_snapshot(tmp_path).fingerprint()
    os.utime(tmp_path / "a", (0, 0))
    assert read_snapshot(tmp_path).fingerprint() == first
    (tmp_path / "a").write_bytes(b"2")
    assert read_snapshot(tmp_path).fingerprint() != first


def test_a_missing_folder_is_an_error(tmp_path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        read_snapshot(tmp_path / "nope")
