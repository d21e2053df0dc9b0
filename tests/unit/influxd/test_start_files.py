"""What influxd's start writes of its own (its log, its pidfile) never stops the start: a file
that cannot be written is said, and influxd is started all the same (invariant 1)."""

from __future__ import annotations

import os
from pathlib import Path

from structlog.testing import capture_logs

from influx_backupd.influxd.server import _log_usable, _write_pidfile


def test_a_log_that_can_be_appended_to_is_used_and_made_private(tmp_path: Path) -> None:
    log = tmp_path / "influxd.log"
    assert _log_usable(log) == log
    assert log.stat().st_mode & 0o777 == 0o600


def test_a_log_that_cannot_be_is_none_and_said(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)  # nobody reads it: opening it to write must not hang
    for path in (tmp_path / "gone" / "influxd.log", tmp_path, fifo):
        with capture_logs() as logs:
            assert _log_usable(path) is None, path
        assert [e["event"] for e in logs] == ["influxd.log_unavailable"], path


def test_a_pidfile_that_cannot_be_written_is_said_not_raised(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with capture_logs() as logs:
        _write_pidfile(tmp_path / "file" / "influxd.pid", 4242)
    assert [(e["event"], e["pid"]) for e in logs] == [("influxd.pidfile_not_written", 4242)]
    _write_pidfile(tmp_path / "run" / "influxd.pid", 4242)
    assert (tmp_path / "run" / "influxd.pid").read_text() == "4242\n"
