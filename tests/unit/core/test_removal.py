"""Removing big files beside a live server: shrunk step by step, then unlinked; never through
another hard link or a symlink."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from influx_backupd.core import removal
from influx_backupd.core.removal import remove_gently


def _fill(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_a_tree_goes_whole_and_nothing_outside_it(tmp_path: Path) -> None:
    tree = tmp_path / "scratch"
    _fill(tree / "data" / "db" / "rp" / "1" / "000000001-000000001.tsm", 3 << 20)
    _fill(tree / "wal" / "small", 100)
    outside_file = tmp_path / "keep" / "archive.tar"
    kept = _fill(outside_file, 3 << 20)
    (tree / "to-file").symlink_to(outside_file)
    (tree / "to-dir").symlink_to(outside_file.parent, target_is_directory=True)
    remove_gently(tree, step=1 << 20, rate=1 << 40)
    assert not tree.exists()
    assert hashlib.sha256(outside_file.read_bytes()).hexdigest() == kept
    remove_gently(tree)  # missing: nothing to do, as rm -f


def test_a_big_file_is_cut_down_in_steps_before_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "job-1.tar"
    _fill(archive, (5 << 20) + 10)
    sizes: list[int] = []
    real = os.ftruncate

    def spy(fd: int, length: int) -> None:
        sizes.append(length)
        real(fd, length)

    monkeypatch.setattr(removal.os, "ftruncate", spy)
    remove_gently(archive, step=2 << 20, rate=1 << 40)
    assert not archive.exists()
    assert sizes == [(3 << 20) + 10, (1 << 20) + 10, 0]


def test_a_file_with_another_hard_link_is_only_unlinked(tmp_path: Path) -> None:
    """A chain merge links a backup's own tars into its scratch: emptying the scratch's name
    would empty the backup's."""
    backup = tmp_path / "backups" / "shard.tar.gz"
    kept = _fill(backup, 3 << 20)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.link(backup, scratch / "shard.tar.gz")
    remove_gently(scratch, step=1 << 20, rate=1 << 40)
    assert not scratch.exists()
    assert hashlib.sha256(backup.read_bytes()).hexdigest() == kept


def test_ignore_errors_leaves_what_cannot_go_and_removes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "scratch"
    _fill(tree / "stuck" / "a", 10)
    _fill(tree / "free" / "b", 10)
    real = os.rmdir

    def refuse(path: str) -> None:
        if path.endswith("stuck"):
            raise PermissionError(13, "Permission denied", path)
        real(path)

    monkeypatch.setattr(removal.os, "rmdir", refuse)
    with pytest.raises(PermissionError):
        remove_gently(tree)
    _fill(tree / "free" / "b", 10)
    remove_gently(tree, ignore_errors=True)
    assert sorted(p.name for p in tree.iterdir()) == ["stuck"]
    assert not (tree / "stuck" / "a").exists()
