"""Flush-behind of the files the live server writes while it takes a database in: real files,
their dirty pages read back from the kernel with cachestat(2)."""

from __future__ import annotations

import ctypes
import os
import platform
import time
from pathlib import Path

import pytest

from influx_backupd.influxd.writeback import FlushBehind

CACHESTAT = {"x86_64": 451, "aarch64": 451}.get(platform.machine())
PAGE = os.sysconf("SC_PAGE_SIZE")


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


def _dirty_pages(path: Path) -> int:
    """Pages of path the kernel holds dirty, not yet under writeback."""
    libc = ctypes.CDLL(None, use_errno=True)
    stat = _Stat()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(stat), 0) != 0:
            pytest.skip(f"cachestat(2) unavailable: errno {ctypes.get_errno()}")
    finally:
        os.close(fd)
    return int(stat.nr_dirty)


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(os.urandom(size))  # no fsync: left to the kernel's writeback, 30 s away


@pytest.mark.skipif(CACHESTAT is None, reason="cachestat(2)'s number known for x86_64/arm64")
def test_the_files_under_the_root_are_written_back_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "data" / "restored"
    imported = root / "autogen" / "7" / "000000001-000000001.tsm.tmp"
    elsewhere = tmp_path / "data" / "live" / "autogen" / "3" / "000000001-000000001.tsm"
    size = 32 << 20
    _write(imported, size)
    _write(elsewhere, size)
    if _dirty_pages(imported) < size // PAGE // 2:
        pytest.skip("the kernel wrote the file back before we could (memory pressure?)")
    behind = FlushBehind(root)
    behind.look()
    assert behind.pushed == size
    deadline = time.monotonic() + 10
    while _dirty_pages(imported) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _dirty_pages(imported) == 0
    # the kernel's own writeback is 30 s away: what we did not push is still dirty
    assert _dirty_pages(elsewhere) > size // PAGE // 2


def test_only_new_bytes_are_pushed_once_a_chunk_has_grown(tmp_path: Path) -> None:
    tsm = tmp_path / "db" / "rp" / "1" / "a.tsm.tmp"
    _write(tsm, 100_000)
    behind = FlushBehind(tmp_path / "db", chunk=256 << 10)
    behind.look()
    assert behind.pushed == 0  # less than a chunk: left for the next look
    with tsm.open("ab") as f:
        f.write(os.urandom(300_000))
    behind.look()
    assert behind.pushed == 400_000
    tsm.rename(tsm.with_suffix(""))  # influxd renames the .tmp when whole: the same inode
    behind.look()
    assert behind.pushed == 400_000
    with tsm.with_suffix("").open("ab") as f:
        f.write(os.urandom(300_000))
    behind.look()
    assert behind.pushed == 700_000


def test_a_missing_root_a_fifo_and_a_symlink_are_passed_over(tmp_path: Path) -> None:
    FlushBehind(tmp_path / "not-yet").look()  # the database's dir appears when influxd makes it
    root = tmp_path / "db"
    root.mkdir()
    os.mkfifo(root / "fifo")  # opening it for reading would block
    target = tmp_path / "outside"
    _write(target, 1 << 20)
    (root / "link").symlink_to(target)
    behind = FlushBehind(root, chunk=1)
    behind.look()
    assert behind.pushed == 0


def test_in_use_it_pushes_in_the_background_and_stops(tmp_path: Path) -> None:
    tsm = tmp_path / "db" / "a.tsm"
    with FlushBehind(tmp_path / "db", chunk=1 << 20, interval=0.01) as behind:
        _write(tsm, 2 << 20)
        deadline = time.monotonic() + 10
        while behind.pushed < 2 << 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert behind.pushed == 2 << 20
    assert behind.thread is not None and not behind.thread.is_alive()


def test_the_switch_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUX_BACKUPD_FLUSH_BEHIND", "off")
    with FlushBehind(tmp_path) as behind:
        assert behind.thread is None


def test_a_file_cut_down_or_gone_is_not_taken_for_what_it_was(tmp_path: Path) -> None:
    """A new file can get the inode number of one just removed (a compaction replacing files):
    taken for the old one, it would not be pushed until it outgrew it."""
    root = tmp_path / "db"
    tsm = root / "a.tsm"
    _write(tsm, 2 << 20)
    behind = FlushBehind(root, chunk=1 << 20)
    behind.look()
    assert behind.pushed == 2 << 20
    with tsm.open("r+b") as f:  # the same inode, holding less than was pushed
        f.truncate(0)
        f.write(os.urandom(1 << 20))
    behind.look()
    assert behind.pushed == 3 << 20
    tsm.unlink()
    behind.look()
    assert behind.flushed == {}, "a removed file's inode is forgotten"
