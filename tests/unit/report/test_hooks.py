"""Hooks and heartbeats: real processes and real sockets, no mocks."""

from __future__ import annotations

import http.server
import io
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from influx_backupd.core import log
from influx_backupd.report import heartbeat
from influx_backupd.report.hooks import environment, run_hook
from influx_backupd.store.record import RunRecord
from tests.conftest import silent


@pytest.fixture(autouse=True)
def _log_to_a_buffer() -> Iterator[io.StringIO]:
    # Another test may have left structlog writing to a stream pytest has closed.
    buffer = io.StringIO()
    log.configure(stream=buffer, json=True)
    yield buffer


def test_environment_carries_the_record() -> None:
    record = RunRecord("r1", "nightly", "cold", status="failed", error="boom", downtime_s=1.25)
    env = environment(record)
    assert env["INFLUX_BACKUPD_JOB"] == "nightly"
    assert env["INFLUX_BACKUPD_STATUS"] == "failed"
    assert env["INFLUX_BACKUPD_ERROR"] == "boom"
    assert env["INFLUX_BACKUPD_DOWNTIME_S"] == "1.250"
    assert env["INFLUX_BACKUPD_ARCHIVE"] == ""
    assert all(isinstance(v, str) for v in env.values())


def test_hook_gets_argv_without_a_shell_and_its_output_is_kept(tmp_path: Path) -> None:
    result = run_hook(
        [sys.executable, "-c", "import os, sys; print(sys.argv[1], os.environ['X'])", "$HOME;*"],
        {"X": "y"},
        10,
    )
    assert result.ok
    assert result.output.strip() == "$HOME;* y", "no shell expanded the argument"


def test_a_hook_that_prints_a_lot_is_read_by_its_tail_and_its_urls_are_not_logged(
    _log_to_a_buffer: io.StringIO,
) -> None:
    """Before: a hook printing 400 MB took the backup to 444 MB RSS (its output read whole), and
    `hook.finished` logged the argv as given: `curl https://hc-ping.com/UUID` leaked the UUID
    the heartbeat's own log hides."""
    import subprocess

    code = "import sys; [sys.stdout.write('x' * 1048576) for _ in range(200)]; print('END')"
    hook = [sys.executable, "-c", code, "https://hc-ping.com/6f1c-secret-uuid?t=tok"]
    # the peak RSS of a fresh process running the hook: its VmHWM, as ru_maxrss keeps the
    # peak of the image before exec (here a fork of a pytest worker of any size)
    peak = "[ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from influx_backupd.report.hooks import run_hook; "
            f"r = run_hook({hook!r}, {{}}, 60); "
            f"print({peak}, repr(r.output[-4:]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_kib, tail = child.stdout.split()[-2:]
    assert tail == repr("END\n"), child.stdout
    assert int(peak_kib) < 150_000, f"the 200 MB output was read into memory ({peak_kib} KiB)"
    result = run_hook(hook, {}, 60)
    assert result.ok and result.output.endswith("END\n") and len(result.output) <= 2000
    logged = _log_to_a_buffer.getvalue()
    assert "hook.finished" in logged and "https://hc-ping.com/" in logged
    assert "6f1c" not in logged and "tok" not in logged


def test_hook_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # sh, not Python: its child is running within milliseconds, well inside the timeout, even
    # on a loaded machine (two Python start-ups once took longer than the timeout).
    script = f'sleep 60 & echo $! > "{pidfile}"; sleep 60'
    started = time.monotonic()
    result = run_hook(["sh", "-c", script], {}, 1.5)
    assert time.monotonic() - started < 30
    assert result.timed_out and result.returncode is None and not result.ok
    child = int(pidfile.read_text())
    # SIGKILL is delivered asynchronously: on a loaded machine the child may take a moment to
    # die (seen once in a full run). A survivor would still be sleeping after 10 s.
    deadline = time.monotonic() + 10
    while True:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, "the hook's child survived its group's SIGKILL"
        time.sleep(0.02)


def test_hook_failures_are_results_not_exceptions() -> None:
    assert run_hook([sys.executable, "-c", "raise SystemExit(4)"], {}, 10).returncode == 4
    missing = run_hook(["/nonexistent/hook"], {}, 10)
    assert missing.returncode is None and "cannot start" in (missing.error or "")


class _Server:
    def __init__(self, status: int) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/abc"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server(200)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_heartbeat_urls_in_the_healthchecks_style(server: _Server) -> None:
    assert heartbeat.ping(server.url, "start")
    assert heartbeat.ping(server.url + "/", "success")
    assert heartbeat.ping(server.url, "fail")
    assert server.paths == ["/abc/start", "/abc", "/abc/fail"]


def test_heartbeat_signals_go_on_the_path_before_a_query(server: _Server) -> None:
    """A push URL with a query (`?create=1`, `?status=up&msg=OK`): /start and /fail once went
    after the query, so a failed run pinged the success endpoint."""
    query = server.url + "?create=1&msg=OK#frag"
    assert heartbeat.ping(query, "start")
    assert heartbeat.ping(query, "success")
    assert heartbeat.ping(query, "fail")
    assert heartbeat.ping(server.url + "/?create=1", "fail")
    assert server.paths == [
        "/abc/start?create=1&msg=OK",
        "/abc?create=1&msg=OK",
        "/abc/fail?create=1&msg=OK",
        "/abc/fail?create=1",
    ]


def test_heartbeat_to_a_closed_port_or_a_silent_server_returns_false_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert heartbeat.ping(f"http://127.0.0.1:{port}/x", "success", timeout=2) is False

    with silent() as peer:
        started = time.monotonic()
        url = f"http://127.0.0.1:{peer.port}/x"
        assert heartbeat.ping(url, "start", timeout=1) is False
        assert time.monotonic() - started < 10


def test_heartbeat_http_error_is_a_failure() -> None:
    s = _Server(500)
    try:
        assert heartbeat.ping(s.url, "success") is False
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
