"""muppet.fileio: the one durable replace-a-file helper and fsync_directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from muppet.fileio import fsync_directory, write_atomically


def test_write_atomically_creates_then_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomically(target, b"first")
    assert target.read_bytes() == b"first"
    write_atomically(str(target), b"second")  # str or PathLike
    assert target.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_atomically_keeps_the_usual_mode(tmp_path: Path) -> None:
    # Not mkstemp's 0600: an operator's `muppet-sync status` reads the status
    # file as another user.
    old = os.umask(0o022)
    try:
        write_atomically(tmp_path / "status.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "status.json").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    # A directory in the target's place: the rename fails after the data was
    # written and fsynced.
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomically(tmp_path / "target", b"new")
    assert (tmp_path / "target" / "inside").read_text() == "kept"
    assert os.listdir(tmp_path) == ["target"]


def test_write_atomically_into_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "f", b"x")


def test_fsync_directory(tmp_path: Path) -> None:
    fsync_directory(tmp_path)
    fsync_directory(str(tmp_path))
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_directory(tmp_path / "f")
