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


def test_option_like_names_are_invalid(tmp_path) -> None:
    for name in ("--help", "--force", "-x", "-v", "-"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a-b").write_bytes(b"y")
    snap = read_snapshot(tmp_path)
    assert snap.values == {"a-b": b"y"}
    assert snap.left_out == ["-", "--force", "--help", "-v", "-x"]


def test_links_that_lead_outside_the_folder_are_left_out(tmp_path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (tmp_path / "shadow").write_bytes(b"outside")
    (secrets / "a").write_bytes(b"inside")
    (secrets / "stolen").symlink_to(tmp_path / "shadow")
    (secrets / "relative").symlink_to("../shadow")
    (secrets / "alias").symlink_to("a")
    snap = read_snapshot(secrets)
    assert snap.values == {"a": b"inside", "alias": b"inside"}
    assert snap.outside == ("relative", "stolen") and snap.left_out == ["relative", "stolen"]
    before = snap.fingerprint()
    (secrets / "stolen").unlink()
    assert read_snapshot(secrets).fingerprint() != before  # leaving the list is a change too


def test_a_data_link_that_leads_outside_the_folder_is_an_error(tmp_path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "passwd").write_bytes(b"root:x:0:0")
    (secrets / "..data").symlink_to(elsewhere)
    with pytest.raises(SourceError, match="points outside"):
        read_snapshot(secrets)
