"""What counts as a request moving (offsite/bucket.Activity): a slow endpoint that takes bytes
now and then is not stalled; one that takes nothing is. Real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from influx_backupd.offsite.bucket import Activity

MiB = 1 << 20


def _slow_reader(rate: int, stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def read() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.is_set():
                if rate:
                    conn.recv(4096)
                time.sleep(4096 / rate if rate else 0.1)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return server, thread


def _sending(activity: Activity, port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port))

    def send() -> None:
        activity.begin()  # as botocore's before-send: then the whole body to the kernel
        with contextlib.suppress(OSError):
            client.sendall(b"x" * (8 * MiB))

    threading.Thread(target=send, daemon=True).start()
    return client


def _longest_still(activity: Activity, seconds: float) -> float:
    worst, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        worst = max(worst, activity.stalled_for())
        time.sleep(0.25)
    return worst


def test_a_body_draining_slowly_from_the_send_queue_is_moving() -> None:
    """Before: once the kernel held the body, nothing of ours ran until the answer; at 64 KiB/s
    a few MiB in the socket's buffer read as a stall of a minute."""
    stop = threading.Event()
    server, _ = _slow_reader(256 * 1024, stop)
    activity = Activity()
    client = _sending(activity, server.getsockname()[1])
    try:
        assert _longest_still(activity, 6.0) < 2.5
    finally:
        stop.set()
        client.close()
        server.close()


def test_an_endpoint_that_takes_nothing_is_stalled() -> None:
    stop = threading.Event()
    server, _ = _slow_reader(0, stop)
    activity = Activity()
    client = _sending(activity, server.getsockname()[1])
    try:
        assert _longest_still(activity, 5.0) > 3.0
    finally:
        stop.set()
        client.close()
        server.close()
