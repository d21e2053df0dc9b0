"""[notify] through apprise and the heartbeat's pings, against a real local HTTP receiver and a
real influxd: what each event sends, and that a failing notification never fails a backup."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from influx_backupd.influxd.sandbox import Sandbox, free_port
from tests.conftest import Cli, log_events, write_config

pytestmark = pytest.mark.influxd


class Receiver:
    """An HTTP server that records every request; paths under /broken answer 500."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(500 if self.path.startswith("/broken") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for m, p, body in self.requests if m == "POST" and p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def notify_section(receiver: Receiver, **events: str) -> str:
    lines = ["", "[notify]", 'timeout = "20s"']
    lines += [f'{event} = ["json://{receiver.url}{path}"]' for event, path in events.items()]
    return "\n".join(lines) + "\n"


def test_start_and_success_with_the_log_tail(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    job = {
        "name": "nightly",
        "mode": "cold",
        "copy": "direct",
        "heartbeat_url": f"http://{receiver.url}/hc",
    }
    config = write_config(
        tmp_path,
        sandbox,
        jobs=[job],
        extra=notify_section(receiver, start="/start", success="/ok", failure="/fail"),
    )
    done = Cli(config)("backup", "--json")
    record = json.loads(done.stdout)
    assert record["status"] == "ok"
    # each notify.sent names its job and mode, the start's too (before its run has an id)
    sent = log_events(done.stderr, "notify.sent")
    assert [(e.get("job"), e.get("mode")) for e in sent] == [("nightly", "cold")] * 2, sent
    [start] = receiver.posts("/start")
    assert start["type"] == "info" and start["title"].endswith("nightly started")
    [ok] = receiver.posts("/ok")
    assert ok["type"] == "success" and ok["title"].endswith("nightly ok")
    message = ok["message"]
    assert message.startswith(f"run {record['id']}, job nightly, mode cold: ok")
    assert f"archive: {record['archive']}" in message
    tail = message.split("log lines:\n", 1)[1].splitlines()
    assert any("influxd.stopped" in line for line in tail), tail
    assert any("run.finished" in line for line in tail), tail
    assert receiver.posts("/fail") == []
    # healthchecks-style: GET /start when it begins, POST the summary and tail on success
    pings = [(m, p) for m, p, _ in receiver.requests if p.startswith("/hc")]
    assert pings == [("GET", "/hc/start"), ("POST", "/hc")]
    body = next(b for m, p, b in receiver.requests if p == "/hc").decode()
    assert record["id"] in body and "influxd.stopped" in body


def test_failure_is_notified_and_pinged(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    job = {"name": "nightly", "mode": "cold", "heartbeat_url": f"http://{receiver.url}/hc"}
    config = write_config(
        tmp_path,
        sandbox,
        jobs=[job],
        extra=notify_section(receiver, success="/ok", failure="/fail"),
    )
    sandbox.stop()  # a cold backup of a server that is not running fails before anything
    done = Cli(config)("backup", "--json")
    assert done.returncode == 1
    record = json.loads(done.stdout)
    [failed] = receiver.posts("/fail")
    assert failed["type"] == "failure" and failed["title"].endswith("nightly failed")
    assert f"error: {record['error']}" in failed["message"]
    assert receiver.posts("/ok") == []
    assert [(m, p) for m, p, _ in receiver.requests if p.startswith("/hc")][-1] == (
        "POST",
        "/hc/fail",
    )


def test_a_failing_notification_never_fails_the_backup(
    tmp_path: Path, sandbox: Sandbox, receiver: Receiver
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    extra = (
        "\n[notify]\n"
        'timeout = "10s"\n'
        f'start = ["json://{nobody}/x"]\n'
        f'success = ["json://{receiver.url}/broken", "json://{nobody}/y"]\n'
    )
    config = write_config(tmp_path, sandbox, extra=extra)
    done = Cli(config)("backup", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "notify.failed"]
    assert [e["notify"] for e in failed] == ["start", "success"]
    assert all(nobody not in json.dumps(e) for e in failed), "URLs (and their secrets) not logged"
    assert receiver.posts("/broken"), "the receiver was asked"


def test_an_unknown_url_is_a_config_error(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(
        tmp_path,
        sandbox,
        extra='\n[notify]\nfailure = ["ntfy://ntfy.sh/x", "carrier-pigeon://coo"]\n',
    )
    done = Cli(config)("check-config")
    assert done.returncode == 78
    assert done.stderr.count("\n") == 1
    assert "notify.failure[1]" in done.stderr and "'carrier-pigeon'" in done.stderr


def test_a_receiver_that_answers_a_byte_at_a_time_holds_nothing_past_the_timeout(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It answers, so no connect or read timeout fires: one header line a second, without
    end. apprise's own thread pool would keep the process open until the receiver stopped
    (Python joins it at exit); the notifier's process is killed at the timeout instead."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for n in range(600):
                if stop.wait(1.0):
                    return
                try:
                    conn.sendall(f"X-Drip-{n}: 1\r\n".encode())
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    # this run's notifiers, told from those of tests running beside it by what they inherit
    mark = uuid.uuid4().hex
    monkeypatch.setenv("INFLUX_BACKUPD_TEST_RUN", mark)
    url = f"json://127.0.0.1:{listener.getsockname()[1]}/drip"
    extra = f'\n[notify]\ntimeout = "3s"\nstart = ["{url}"]\nsuccess = ["{url}"]\n'
    try:
        done = Cli(write_config(tmp_path, sandbox, extra=extra))("backup", "--json", timeout=60)
    finally:
        stop.set()
        listener.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    failed = [e for e in log_events(done.stderr) if e["event"] == "notify.failed"]
    assert [e["notify"] for e in failed] == ["start", "success"]
    assert all("no answer within 3s" in e["error"] for e in failed)
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "influx_backupd.report.notify_child" in (p.info["cmdline"] or []) and _inherited(p, mark)
    ]
    assert left == [], "no notifier outlives its timeout"


def _inherited(proc: psutil.Process, mark: str) -> bool:
    try:
        return proc.environ().get("INFLUX_BACKUPD_TEST_RUN") == mark
    except psutil.Error:
        return False  # gone meanwhile
