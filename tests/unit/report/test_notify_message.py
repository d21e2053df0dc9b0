"""report.notify: which event a record is, what its message says, and sending to a real local
HTTP receiver (apprise's json://), including one that never answers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from influx_backupd.report import notify
from influx_backupd.store.record import RunRecord
from tests.conftest import silent


def record(**kw: object) -> RunRecord:
    base: dict[str, object] = {"id": "20261130T000000Z-abcd", "job": "nightly", "mode": "cold"}
    return RunRecord.from_dict({**base, **kw})


def test_event_for_each_ending() -> None:
    assert notify.event_for(record(status="ok")) == "success"
    assert notify.event_for(record(status="failed", error="x")) == "failure"
    assert notify.event_for(record(status="interrupted")) == "failure"
    assert notify.event_for(record(status="ok", verify_status="failed")) == "verify_failed"


def test_summary_and_tail() -> None:
    bad = record(
        status="ok",
        verify_status="failed",
        verify_detail="wal/_00001.wal: corrupt entry",
        archive="/b/nightly.tar",
        bytes=3 << 20,
        downtime_s=0.5,
    )
    text = notify.summary("verify_failed", bad, [f"line {i}" for i in range(30)])
    lines = text.splitlines()
    assert lines[0] == "run 20261130T000000Z-abcd, job nightly, mode cold: ok"
    assert "verify failed: wal/_00001.wal: corrupt entry" in lines
    assert "archive: /b/nightly.tar (3.0 MiB)" in lines and "downtime: 0.500s" in lines
    assert lines[-21:] == ["last 20 log lines:", *(f"line {i}" for i in range(10, 30))]
    assert notify.title("verify_failed", bad).endswith("nightly backup failed verification")


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, object]]]]:
    got: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"json://127.0.0.1:{server.server_port}/n", got
    finally:
        server.shutdown()
        server.server_close()


def test_send_reaches_the_receiver(receiver: tuple[str, list[dict[str, object]]]) -> None:
    url, got = receiver
    assert notify.send([url], "subject", "body\nline 2", event="verify_failed")
    assert got == [
        {
            "version": "1.0",
            "title": "subject",
            "message": "body\nline 2",
            "attachments": [],
            "type": "failure",
        }
    ]
    assert notify.send([], "s", "b", event="start"), "nothing to send is no failure"


def test_a_silent_receiver_costs_at_most_the_timeout() -> None:
    # A receiver that accepts and never answers: the request hangs, apprise waits.
    with silent() as peer:
        started = time.monotonic()
        assert not notify.send(
            [f"json://127.0.0.1:{peer.port}/x"], "s", "b", event="failure", timeout=1
        )
        assert time.monotonic() - started < 5


def test_the_notifier_never_imports_from_the_callers_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root command run in a directory holding an influx_backupd/ of someone else's: the
    notifier child is ours all the same (python -P)."""
    marker = tmp_path / "ran"
    fake = tmp_path / "influx_backupd" / "report"
    fake.mkdir(parents=True)
    (tmp_path / "influx_backupd" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "notify_child.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    outcome = notify._in_child(
        {"urls": ["json://127.0.0.1:1/x"], "subject": "s", "body": "b", "event": "failure"}, 20
    )
    assert not marker.exists(), "another package's code ran"
    assert outcome.get("ok") is False, outcome  # ours: it tried, and port 1 refused


def test_a_failing_wait_on_the_notifier_is_a_failed_notification_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """communicate() itself failed (EINVAL from its wait, seen under libfaketime): send() raised
    through run_backup, which had sent its start ping and then left no record at all."""
    import subprocess

    def broken(self: subprocess.Popen[bytes], *args: object, **kwargs: object) -> object:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(subprocess.Popen, "communicate", broken)
    assert notify.send(["json://127.0.0.1:9/x"], "s", "b", event="start", timeout=5) is False
