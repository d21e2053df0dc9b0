"""sd_notify, watchdog and journal protocol, checked against real AF_UNIX datagram sockets."""

from __future__ import annotations

import array
import fcntl
import io
import json
import os
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from influx_backupd.core import journal, log, systemd


@pytest.fixture
def no_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def dgram_path(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket at a file path, and that path."""
    path = str(tmp_path / "s.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


@pytest.fixture
def notify_socket(
    dgram_path: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> socket.socket:
    sock, path = dgram_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    return sock


def recv(sock: socket.socket) -> bytes:
    return sock.recv(1 << 20)


def assert_nothing_pending(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(1 << 20)
    finally:
        sock.settimeout(5)


# --- sd_notify ----------------------------------------------------------------------------------


def test_notify_without_socket_returns_false(no_systemd_env: None) -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False


def test_ready_to_path_socket(notify_socket: socket.socket) -> None:
    assert systemd.ready() is True
    assert recv(notify_socket) == b"READY=1"


def test_notify_to_abstract_socket(monkeypatch: pytest.MonkeyPatch, no_systemd_env: None) -> None:
    name = f"influx-backupd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STATUS=idle", "READY=1") is True
        assert recv(sock) == b"STATUS=idle\nREADY=1"


def test_helpers_send_exact_assignments(notify_socket: socket.socket) -> None:
    assert systemd.stopping()
    assert recv(notify_socket) == b"STOPPING=1"
    assert systemd.watchdog_ping()
    assert recv(notify_socket) == b"WATCHDOG=1"
    assert systemd.extend_timeout(90)
    assert recv(notify_socket) == b"EXTEND_TIMEOUT_USEC=90000000"
    assert systemd.extend_timeout(0.5)
    assert recv(notify_socket) == b"EXTEND_TIMEOUT_USEC=500000"


def test_status_cannot_inject_assignments(notify_socket: socket.socket) -> None:
    assert systemd.status("backing up\nREADY=1")
    assert recv(notify_socket) == b"STATUS=backing up READY=1"


def test_reloading_carries_monotonic_usec(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", recv(notify_socket))
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_send_failure_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert systemd.ready() is False
    # A socket file with nobody reading it: ECONNREFUSED.
    path = str(tmp_path / "closed.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.close()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.ready() is False


# --- watchdog -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("60000000", None, 30.0),
        ("60000000", "self", 30.0),
        ("60000000", "other", None),
        ("60000000", "not-a-pid", None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch,
    no_systemd_env: None,
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert systemd.watchdog_interval() == expected


@pytest.mark.parametrize(
    ("usec", "expected"),
    [("99999999999999999999999", 3600.0), ("1", 0.1)],
)
def test_a_watchdog_interval_out_of_range_is_clamped_and_said_once(
    monkeypatch: pytest.MonkeyPatch, no_systemd_env: None, usec: str, expected: float
) -> None:
    """Before: a huge WATCHDOG_USEC killed the watchdog thread (OverflowError), 1 gave tens
    of thousands of pings a second."""
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setattr(systemd, "_CLAMP_TOLD", set(), raising=False)
    with structlog.testing.capture_logs() as logs:
        assert systemd.watchdog_interval() == expected
        assert systemd.watchdog_interval() == expected
    [said] = [e for e in logs if e["event"] == "systemd.watchdog_clamped"]
    assert said["pinging_every_s"] == expected


def test_a_huge_watchdog_interval_keeps_the_thread_and_a_tiny_one_pings_sanely(
    monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> None:
    pings: list[float] = []
    monkeypatch.setattr(systemd, "watchdog_ping", lambda: pings.append(time.monotonic()))
    dog = systemd.Watchdog(lambda: True, interval=1e20)
    assert dog.start()
    thread = dog._thread
    time.sleep(0.2)
    assert thread is not None and thread.is_alive()
    dog.stop()
    assert not thread.is_alive() and pings
    pings.clear()
    monkeypatch.setenv("WATCHDOG_USEC", "1")
    dog = systemd.Watchdog(lambda: True)
    assert dog.start()
    time.sleep(0.5)
    dog.stop()
    assert 1 <= len(pings) <= 10, len(pings)


def test_watchdog_without_interval_does_not_start(no_systemd_env: None) -> None:
    dog = systemd.Watchdog(lambda: True)
    assert dog.start() is False
    dog.stop()


def test_watchdog_uses_env_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 200 ms
    dog = systemd.Watchdog(lambda: True)
    assert dog.interval == pytest.approx(0.2)
    assert dog.start() is True
    try:
        assert recv(notify_socket) == b"WATCHDOG=1"
        assert recv(notify_socket) == b"WATCHDOG=1"
    finally:
        dog.stop()


class Health:
    """alive() for the Watchdog that records every answer it gave."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.healthy = True
        self.answers: list[bool] = []

    def __call__(self) -> bool:
        with self.lock:
            self.answers.append(self.healthy)
            self.lock.notify_all()
            return self.healthy

    def wait_for(self, count: int, value: bool) -> None:
        with self.lock:
            ok = self.lock.wait_for(lambda: self.answers.count(value) >= count, timeout=5)
        assert ok, f"alive() did not answer {value} {count} times"


def test_watchdog_pings_only_while_alive(notify_socket: socket.socket) -> None:
    health = Health()
    dog = systemd.Watchdog(health, interval=0.01)
    assert dog.start()
    try:
        health.wait_for(3, True)
        with health.lock:
            health.healthy = False
        health.wait_for(3, False)
    finally:
        dog.stop()
    # Each True answer produced exactly one ping and no False answer produced any.
    assert health.answers == sorted(health.answers, reverse=True)
    pings = [recv(notify_socket) for _ in range(health.answers.count(True))]
    assert pings == [b"WATCHDOG=1"] * len(pings)
    assert_nothing_pending(notify_socket)


def test_watchdog_treats_raising_check_as_dead(notify_socket: socket.socket) -> None:
    calls = threading.Semaphore(0)

    def broken() -> bool:
        calls.release()
        raise RuntimeError("main loop state unreadable")

    dog = systemd.Watchdog(broken, interval=0.01)
    dog.start()
    try:
        for _ in range(3):
            assert calls.acquire(timeout=5)
    finally:
        dog.stop()
    assert_nothing_pending(notify_socket)


# --- journal ------------------------------------------------------------------------------------


def parse_journal(data: bytes) -> dict[str, bytes]:
    """Parse a native-protocol entry; fails on anything malformed."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert len(value) == size, "truncated binary field"
            assert data[end + 9 + size : end + 10 + size] == b"\n", "binary field not LF-terminated"
            pos = end + 10 + size
        key = name.decode("ascii")
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), key
        assert key not in fields, f"duplicate {key}"
        fields[key] = value
    return fields


def test_parser_handles_both_forms() -> None:
    raw = b"A=1\nB\n" + struct.pack("<Q", 3) + b"x\ny\nC=\n"
    assert parse_journal(raw) == {"A": b"1", "B": b"x\ny", "C": b""}


def test_journal_payload_exact_bytes() -> None:
    payload = journal.journal_payload({"message": "hi", "PRIORITY": 6, "trace": "a\nb"})
    assert payload == b"MESSAGE=hi\nPRIORITY=6\nTRACE\n\x03\x00\x00\x00\x00\x00\x00\x00a\nb\n"


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("run_id", "RUN_ID"),
        ("_SYSTEMD_UNIT", "SYSTEMD_UNIT"),
        ("2fa", "FA"),
        ("a-b.c", "A_B_C"),
        ("___", ""),
        ("x" * 80, "X" * 64),
    ],
)
def test_journal_field_name(key: str, name: str) -> None:
    assert journal.journal_field_name(key) == name


def test_journal_send_datagram(dgram_path: tuple[socket.socket, str]) -> None:
    sock, path = dgram_path
    journal.journal_send(
        {
            "MESSAGE": "cold backup done",
            "PRIORITY": 6,
            "SYSLOG_IDENTIFIER": "influx-backupd",
            "run_id": "r-1",
            "_trusted": "not trusted",
            "detail": "line one\nline two",
            "!!!": "dropped: no usable name",
        },
        socket_path=path,
    )
    assert parse_journal(recv(sock)) == {
        "MESSAGE": b"cold backup done",
        "PRIORITY": b"6",
        "SYSLOG_IDENTIFIER": b"influx-backupd",
        "RUN_ID": b"r-1",
        "TRUSTED": b"not trusted",
        "DETAIL": b"line one\nline two",
    }


def test_journal_send_to_missing_socket_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        journal.journal_send({"MESSAGE": "x"}, socket_path=str(tmp_path / "none.sock"))


def test_journal_send_large_entry_via_memfd(dgram_path: tuple[socket.socket, str]) -> None:
    sock, path = dgram_path
    # 8 MB is far above the AF_UNIX datagram limit (bounded by wmem, ~200 KB by default),
    # so the first sendto fails with EMSGSIZE and the memfd path must be taken.
    big = ("0123456789abcdef" * (8 * 1024 * 1024 // 16)) + "\nend"
    journal.journal_send(
        {"MESSAGE": big, "PRIORITY": 3, "SYSLOG_IDENTIFIER": "influx-backupd"}, socket_path=path
    )
    fd_size = array.array("i").itemsize
    data, ancdata, _flags, _addr = sock.recvmsg(1024, socket.CMSG_SPACE(fd_size))
    assert data == b""
    assert len(ancdata) == 1
    level, kind, cmsg = ancdata[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fds = array.array("i")
    fds.frombytes(cmsg[:fd_size])
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        assert seals & want == want
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(0)
            content = f.read()
    finally:
        os.close(fd)
    fields = parse_journal(content)
    assert fields["MESSAGE"] == big.encode()
    assert fields["PRIORITY"] == b"3"
    assert fields["SYSLOG_IDENTIFIER"] == b"influx-backupd"


def test_journal_available(monkeypatch: pytest.MonkeyPatch, no_systemd_env: None) -> None:
    assert journal.journal_available() is False
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert journal.journal_available() is True
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1_000_000}")
    assert journal.journal_available() is False
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert journal.journal_available() is False


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        ("debug", 7),
        ("info", 6),
        ("warning", 4),
        ("WARN", 4),
        ("error", 3),
        ("exception", 3),
        ("critical", 2),
        ("other", 6),
    ],
)
def test_priority_for(level: str, priority: int) -> None:
    assert journal.priority_for(level) == priority


def journal_logger(
    renderer: journal.JournalRenderer, out: io.StringIO
) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )
    return logger


def test_journal_renderer_sends_fields(dgram_path: tuple[socket.socket, str]) -> None:
    sock, path = dgram_path
    out = io.StringIO()
    log = journal_logger(journal.JournalRenderer(socket_path=path), out)
    log.info("phase finished", run_id="r-7", job="cold", phase="stop", seconds=1.5, message="x y")
    fields = parse_journal(recv(sock))
    text = "phase finished run_id=r-7 job=cold phase=stop seconds=1.5 message='x y'"
    assert fields == {
        "EVENT": b"phase finished",
        "RUN_ID": b"r-7",
        "JOB": b"cold",
        "PHASE": b"stop",
        "SECONDS": b"1.5",
        # The event's own "message" key must not replace the entry's MESSAGE.
        "MESSAGE": text.encode(),
        "PRIORITY": b"6",
        "SYSLOG_IDENTIFIER": b"influx-backupd",
    }
    assert out.getvalue() == text + "\n"


def test_journal_fields_nested_json_message_id_no_duplicates(
    dgram_path: tuple[socket.socket, str],
) -> None:
    """Nested values as JSON (jq reads them), MESSAGE_ID on a finished run, and no LEVEL or
    TIMESTAMP beside the journal's own PRIORITY and timestamp."""
    sock, path = dgram_path
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            log.add_message_id,
            journal.JournalRenderer(socket_path=path),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )
    record = {"status": "failed", "extra": {"dirs": ["meta", "data"]}, "error": "it's 'bad'"}
    logger.error("run.finished", run_id="r-1", record=record)
    fields = parse_journal(recv(sock))
    assert json.loads(fields["RECORD"]) == record
    assert fields["MESSAGE_ID"] == log.MESSAGE_IDS["run_failed"].encode()
    assert len(bytes.fromhex(fields["MESSAGE_ID"].decode())) == 16
    assert "LEVEL" not in fields and "TIMESTAMP" not in fields
    assert fields["PRIORITY"] == b"3"
    message = fields["MESSAGE"].decode()
    assert message.startswith("run.finished run_id=r-1 record={")
    assert json.loads(message.split("record=", 1)[1]) == record
    logger.info("run.finished", run_id="r-2", record={"status": "ok"})
    assert parse_journal(recv(sock))["MESSAGE_ID"] == log.MESSAGE_IDS["run_ok"].encode()
    logger.info("verify.finished", status="ok")
    assert "MESSAGE_ID" not in parse_journal(recv(sock))
    logger.error("verify.finished", status="failed")
    assert parse_journal(recv(sock))["MESSAGE_ID"] == log.MESSAGE_IDS["verify_failed"].encode()
    # scalars that are not text or numbers as JSON too: `journalctl DRY_RUN=true` matches
    logger.info("prune.finished", dry_run=True, deep=False, follower_failed=None, kept=3)
    fields = parse_journal(recv(sock))
    assert (fields["DRY_RUN"], fields["DEEP"], fields["FOLLOWER_FAILED"]) == (
        b"true",
        b"false",
        b"null",
    )
    assert fields["KEPT"] == b"3"
    assert (
        fields["MESSAGE"] == b"prune.finished dry_run=true deep=false follower_failed=null kept=3"
    )


def test_message_ids_are_distinct_128_bit() -> None:
    ids = list(log.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids) == 5
    assert all(len(bytes.fromhex(i)) == 16 for i in ids)


def test_journal_renderer_protocol_fields_win(dgram_path: tuple[socket.socket, str]) -> None:
    sock, path = dgram_path
    log = journal_logger(journal.JournalRenderer(socket_path=path), io.StringIO())
    log.info("e", MESSAGE="a", message="b", priority=1, syslog_identifier="other")
    fields = parse_journal(recv(sock))
    assert fields["MESSAGE"] == b"e MESSAGE=a message=b priority=1 syslog_identifier=other"
    assert fields["PRIORITY"] == b"6"
    assert fields["SYSLOG_IDENTIFIER"] == b"influx-backupd"


def test_journal_renderer_exception(dgram_path: tuple[socket.socket, str]) -> None:
    sock, path = dgram_path
    log = journal_logger(journal.JournalRenderer(socket_path=path), io.StringIO())
    try:
        raise OSError("disk full")
    except OSError:
        log.exception("archive failed", run_id="r-8")
    fields = parse_journal(recv(sock))
    assert fields["PRIORITY"] == b"3"
    assert fields["EXCEPTION"].startswith(b"Traceback")
    assert b"OSError: disk full" in fields["EXCEPTION"]
    assert fields["MESSAGE"].startswith(b"archive failed run_id=r-8\nTraceback")


def test_journal_renderer_drop_and_fallback(
    dgram_path: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = dgram_path
    out = io.StringIO()
    journal_logger(journal.JournalRenderer(socket_path=path, drop=True), out).warning("w")
    assert parse_journal(recv(sock))["PRIORITY"] == b"4"
    assert out.getvalue() == ""  # sent, so not printed again
    # No journal: the line is printed instead of lost, even with drop=True.
    missing = str(tmp_path / "none.sock")
    journal_logger(journal.JournalRenderer(socket_path=missing, drop=True), out).error("e", n=1)
    assert out.getvalue() == "e n=1\n"
