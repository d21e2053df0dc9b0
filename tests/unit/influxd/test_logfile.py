"""state_dir/influxd.log of an influxd we start: trimmed as logrotate's copytruncate does, while
the server keeps writing through its O_APPEND descriptor (found by an audit: it grew ~150 bytes
a write request, for ever)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from influx_backupd.core import log
from influx_backupd.influxd import logfile


def test_a_log_over_the_limit_is_kept_once_and_written_on_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / logfile.NAME
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as influxd holds it
    try:
        os.write(writer, b"old line\n" * 1000)
        assert not logfile.trim(path, log.get(), limit=9000), "at the limit: left alone"
        os.write(writer, b"one more\n")
        assert logfile.trim(path, log.get(), limit=9000)
        kept = path.with_name("influxd.log.1")
        assert kept.read_bytes() == b"old line\n" * 1000 + b"one more\n"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert path.stat().st_size == 0
        os.write(writer, b"after the trim\n")
        assert path.read_bytes() == b"after the trim\n", "no hole of the old size before it"
        os.write(writer, b"x" * 10_000)
        assert logfile.trim(path, log.get(), limit=9000)
        assert kept.read_bytes().startswith(b"after the trim\n"), "the one before replaced"
    finally:
        os.close(writer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["influxd.log", "influxd.log.1"]


def test_no_log_and_an_unwritable_copy_are_said_not_raised(tmp_path: Path) -> None:
    assert not logfile.trim(tmp_path / logfile.NAME, log.get(), limit=1)
    path = tmp_path / logfile.NAME
    path.write_bytes(b"x" * 100)
    (tmp_path / "influxd.log.1").mkdir()  # where the copy goes: os.replace refuses a dir
    assert not logfile.trim(path, log.get(), limit=10)
    assert path.stat().st_size == 100, "not truncated when the copy failed"
    assert not list(tmp_path.glob(".influxd.log.1.*.tmp"))


def test_a_link_or_a_fifo_in_the_logs_place_is_neither_followed_nor_waited_on(
    tmp_path: Path,
) -> None:
    """Before: a symlink there had the trim truncate the file it names (someone's 21 MB file
    left empty, its content only in influxd.log.1 until the next trim); a FIFO blocked it."""
    theirs = tmp_path / "theirs.log"
    theirs.write_bytes(b"x" * 100)
    path = tmp_path / logfile.NAME
    path.symlink_to(theirs)
    assert not logfile.trim(path, log.get(), limit=10)
    assert theirs.read_bytes() == b"x" * 100
    assert not (tmp_path / "influxd.log.1").exists()
    path.unlink()
    os.mkfifo(path)
    assert not logfile.trim(path, log.get(), limit=0)
