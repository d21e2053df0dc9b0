"""Every message goes through structlog: our own, systemd.py's, and libraries' stdlib logging."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.core import log, systemd


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    log.configure(out, "info", json=True)
    try:
        yield out
    finally:
        log.configure(level="info")


def events(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_sd_notify_problems_are_events(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(systemd, "_TOLD", set())  # what an earlier test had said
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    assert systemd.notify("READY=1") is False
    got = events(captured)
    assert [e["event"] for e in got] == ["systemd.notify_unsupported", "systemd.notify_failed"]
    assert got[0]["address"] == "vsock:2:1234" and got[0]["level"] == "warning"
    assert "No such file" in str(got[1]["error"])


def test_a_failing_notify_socket_is_said_once_until_a_send_gets_through(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before: every watchdog ping to a socket nobody reads logged a warning (3 a second)."""
    monkeypatch.setattr(systemd, "_TOLD", set())
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    for _ in range(20):
        assert systemd.notify("WATCHDOG=1") is False
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        assert systemd.notify("WATCHDOG=1") is True
        assert listener.recv(100) == b"WATCHDOG=1"
    finally:
        listener.close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    for _ in range(5):
        assert systemd.notify("WATCHDOG=1") is False
    assert [e["event"] for e in events(captured)] == [
        "systemd.notify_failed",
        "systemd.notify_recovered",
        "systemd.notify_failed",
    ]


def test_library_logging_becomes_an_event(captured: io.StringIO) -> None:
    logging.getLogger("apprise").warning("could not send to %s", "ntfy://x")
    logging.getLogger("apprise").info("chatty detail")  # libraries' info is not wanted
    got = events(captured)
    assert got == [
        {
            "logger": "apprise",
            "message": "could not send to ntfy://x",
            "event": "library.log",
            "level": "warning",
            "timestamp": got[0]["timestamp"],
        }
    ]


def test_a_closed_stream_never_fails_the_caller() -> None:
    out = io.StringIO()
    log.configure(out, "info", json=True)
    out.close()
    try:
        log.get().error("still.fine")  # ValueError on a closed stream: dropped
        log.status_line("bar")
    finally:
        log.configure(level="info")


def test_run_tails_keep_the_last_lines_of_recent_runs(captured: io.StringIO) -> None:
    tails = log.RunTails(lines=3, runs=2)
    for i in range(5):
        tails(None, "info", {"event": f"step.{i}", "run_id": "a", "n": i})
    tails(None, "info", {"event": "x", "run_id": "b"})
    tails(None, "info", {"event": "y", "run_id": "c"})
    assert tails.tail("a") == [], "only the 2 most recent runs are kept"
    assert [line.split() for line in tails.tail("c")] == [["info", "y"]]
    tails = log.RunTails(lines=3, runs=2)
    for i in range(5):
        tails(None, "warning", {"event": f"step.{i}", "run_id": "a", "n": i, "d": {"k": 1}})
    assert [line.strip() for line in tails.tail("a")] == [
        'warning step.2 n=2 d={"k": 1}',
        'warning step.3 n=3 d={"k": 1}',
        'warning step.4 n=4 d={"k": 1}',
    ]


def test_run_tails_see_info_even_when_the_console_shows_warnings_only() -> None:
    out = io.StringIO()
    log.configure(out, "warning", json=True)
    try:
        log.get(run_id="r-quiet").info("influxd.stopped")
        log.get(run_id="r-quiet").debug("too.small")
        log.get(run_id="r-quiet").warning("hot.clock_skew")
    finally:
        log.configure(level="info")
    assert [e["event"] for e in events(out)] == ["hot.clock_skew"]
    tail = log.RUN_TAILS.tail("r-quiet")
    assert [line.split()[1:3] for line in tail] == [
        ["info", "influxd.stopped"],
        ["warning", "hot.clock_skew"],
    ]


def test_any_status_line_is_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """A status line that wraps leaves a row behind at each \\r redraw: whatever is drawn
    there (the bar or anything else) is cut to one row, the last column left free."""
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    console = log._Console(out)
    console.status("x" * 100)
    console.line("a log line above it")
    drawn = [part for part in out.getvalue().split(log.CLEAR_LINE) if part]
    assert drawn[0] == "x" * 38 + "…"
    assert drawn[-1].endswith("\n" + "x" * 38 + "…"), "redrawn cut as well"


def test_events_in_a_run_carry_its_context_and_left_down_events_their_message_id(
    captured: io.StringIO,
) -> None:
    """A bare log.get() inside a run (influxd's start retries) carries run_id, job and mode;
    every event that says influxd is down because of us carries the left-down MESSAGE_ID."""
    with log.run_context(run_id="r1", job="nightly", mode="cold"):
        log.get().error("influxd.start_failed", phase="start", attempt=1)
        log.get(job="nightly").warning("influxd.left_down_alarm")
    log.get().info("influxd.start_failed", phase="start")
    inside, alarm, outside = events(captured)
    assert (inside["run_id"], inside["job"], inside["mode"]) == ("r1", "nightly", "cold")
    assert alarm["run_id"] == "r1"
    left_down = log.MESSAGE_IDS["influxd_left_down"]
    assert inside["message_id"] == alarm["message_id"] == left_down
    assert "run_id" not in outside
