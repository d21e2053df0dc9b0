"""The forwarder that paces a restore's upload to the live server: real sockets on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

from influx_backupd.influxd.throttle import Forwarder


def _server() -> tuple[socket.socket, list[str]]:
    """Reads each connection to its end, answers with the sha256 of what it got, closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                digest = hashlib.sha256()
                while data := conn.recv(1 << 16):
                    digest.update(data)
                got.append(digest.hexdigest())
                conn.sendall(digest.hexdigest().encode())

    threading.Thread(target=serve, daemon=True).start()
    return listener, got


def _send(address: str, payload: bytes) -> bytes:
    host, port = address.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # as a client that has said all it has to say
        answer = b""
        while data := sock.recv(1 << 16):
            answer += data
    return answer


def test_bytes_pass_whole_both_ways_and_no_faster_than_the_rate() -> None:
    listener, got = _server()
    target = f"127.0.0.1:{listener.getsockname()[1]}"
    payload = os.urandom(3 << 20)
    try:
        with Forwarder(target, rate=1 << 20) as paced:
            started = time.monotonic()
            answers = [_send(paced.address, payload), _send(paced.address, payload[:1000])]
            took = time.monotonic() - started
            assert paced.sent == len(payload) + 1000
    finally:
        listener.close()
    assert answers == [
        hashlib.sha256(payload).hexdigest().encode(),
        hashlib.sha256(payload[:1000]).hexdigest().encode(),
    ]
    assert got == [a.decode() for a in answers]
    # 3 MiB at 1 MiB/s, one second of it allowed at once: at least 2 s (a floor, not a timing)
    assert took >= 2.0


def test_without_a_rate_it_only_forwards() -> None:
    listener, _ = _server()
    try:
        with Forwarder(f"127.0.0.1:{listener.getsockname()[1]}", rate=0) as plain:
            assert _send(plain.address, b"x" * 10) == hashlib.sha256(b"x" * 10).hexdigest().encode()
    finally:
        listener.close()


class _AcceptingLate(Forwarder):
    """A forwarder whose accept thread has not run yet when the client is done, as on a
    loaded machine: the connection still waits in the listen backlog at __exit__."""

    def _accept(self) -> None:
        self.closed.wait()


def test_a_client_done_before_its_connection_was_accepted_still_gets_through() -> None:
    listener, got = _server()
    payload = os.urandom(200_000)
    try:
        with _AcceptingLate(f"127.0.0.1:{listener.getsockname()[1]}", rate=0) as late:
            host, port = late.address.split(":")
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(payload)  # taken by the kernel's buffers: nobody has accepted
            # the restore tool has exited 0 here; only the forwarder holds its shard
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.close()
    assert got == [hashlib.sha256(payload).hexdigest()], "the shard reached the server whole"
    assert late.sent == len(payload)


def test_it_returns_only_once_the_server_has_closed_what_a_gone_client_sent() -> None:
    """As `influxd restore` does: the tool writes its shard and exits without waiting for the
    server, which closes the connection only once the shard is in. Returning earlier would
    leave the restore to guess, from outside, when the server is done."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def slow_server() -> None:
        conn, _ = listener.accept()
        with conn:
            while conn.recv(1 << 16):
                pass
            time.sleep(1.0)  # importing the shard, loading its series
            done.set()
            conn.sendall(b"late word for a client that is gone")

    threading.Thread(target=slow_server, daemon=True).start()
    try:
        with Forwarder(f"127.0.0.1:{listener.getsockname()[1]}", rate=0) as paced:
            host, port = paced.address.split(":")
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(os.urandom(1 << 20))
            # the client is gone before the server has read its bytes
        assert done.is_set()
        assert paced.answered
    finally:
        listener.close()
