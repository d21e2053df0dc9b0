"""Restore progress: the terminal bar's label and file counts, and a long command's
EXTEND_TIMEOUT_USEC and STATUS= to a real datagram socket standing for systemd."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from influx_backupd.report import progress


def test_the_bar_says_what_runs_and_counts_files() -> None:
    shown: list[str | None] = []
    bar = progress.TerminalBar(shown.append, label="restore", interval=0, width=10)
    bar(512 << 20, 1 << 30, files=(3, 10))
    line = shown[-1]
    assert line is not None and line.startswith("restore [#####.....]")
    assert "512.0 MiB / 1.0 GiB  3/10 files" in line
    bar(1 << 30, 1 << 30)  # an emitter that counts no files
    assert shown[-1] is not None and "files" not in shown[-1]


def test_listeners_of_two_arguments_still_get_bytes_alone() -> None:
    got: list[tuple[int, int]] = []

    def old_style(done: int, total: int) -> None:
        got.append((done, total))

    progress.listen(old_style)
    try:
        progress.notify(5, 10)
    finally:
        progress.unlisten(old_style)
    assert got == [(5, 10)]


def test_a_long_command_under_systemd_extends_the_timeout_and_shows_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        with progress.under_systemd("restore X", every=0.05, by=60):
            assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=60000000"
            assert sock.recv(4096) == b"STATUS=restore X"
            progress.notify(1 << 20, 2 << 20, files=(1, 4))
            seen = []
            while b"STATUS=restore X: 1.0 MiB / 2.0 MiB, 1/4 files" not in seen:
                seen.append(sock.recv(4096))
            assert b"EXTEND_TIMEOUT_USEC=60000000" in seen, "extended again meanwhile"
        rest = []
        sock.settimeout(1)
        while (message := sock.recv(4096)) != b"STATUS=restore X: finished":
            rest.append(message)
    assert progress._listeners == [], "its listener is gone"


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with progress.under_systemd("restore X", every=0.01):
        assert progress._listeners == []


@pytest.mark.parametrize("columns", [200, 100, 80, 60, 40, 30, 20, 10, 2])
def test_the_bar_fits_the_terminal_and_keeps_the_eta_longest(columns: int) -> None:
    bar = progress.TerminalBar(lambda _s: None)
    bar.files = (12, 16)
    line = bar.line(2_400_000_000, 3_900_000_000, 257.6 * 2**20, columns)
    assert len(line) < columns, "the last column stays free: a full row wraps on some terminals"
    if columns >= 20:
        assert "ETA 6s" in line and "61.5%" in line, line
    if columns >= 40:
        assert "[" in line, "the bar shrinks before it goes"
    if columns >= 100:
        assert "12/16 files" in line and "257.6 MiB/s" in line


def test_the_bar_follows_the_console_width(monkeypatch: pytest.MonkeyPatch) -> None:
    widths = iter([80, 40])
    monkeypatch.setattr(progress.log, "status_columns", lambda: next(widths))
    bar = progress.TerminalBar(lambda _s: None)
    assert 60 < len(bar.line(1, 2, 1000.0)) < 80
    assert len(bar.line(1, 2, 1000.0)) < 40, "read again at each redraw"


def test_a_bar_at_100_percent_is_full_and_ended_clears_it_before_the_command_ends() -> None:
    shown: list[str | None] = []
    bar = progress.TerminalBar(shown.append, interval=0, width=10)
    progress.listen(bar)
    try:
        bar(9_996, 10_000)  # 100.0% once rounded: no dot left
        assert shown[-1] is not None and "[##########] 100.0%" in shown[-1], shown[-1]
        progress.ended()  # the archive is written: influxd's start logs next, under no bar
        assert shown[-1] is None
        progress.ended()
        assert shown.count(None) == 1, "cleared once"
    finally:
        progress.unlisten(bar)
