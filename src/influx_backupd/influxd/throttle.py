"""A TCP forwarder on 127.0.0.1 that caps the bytes a client sends to a server.

`influxd restore -portable` against a live server streams every shard as fast as the disk
gives it; the live server writes it out just as fast, and its own writes wait behind it. Put
between the tool and the live server's snapshot service, this paces the upload (the answers
come back unthrottled), so that restoring one database costs the live server a bounded share
of its disk.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

CHUNK = 64 << 10
# How long the uploads may take to reach the target once the clients are done (a paced one
# holds at most its socket buffers, a few MiB: seconds at any sane rate).
DRAIN_TIMEOUT = 300.0

# Paced at 50 MiB/s, with the server's files flushed behind and its shards never counted while
# it loads them, the live server's write p99 during a 1 GB restore from a hot backup was 0.44-1.0
# times its p99 before (11.2 times with neither; bench/restore_database.py, docs/performance.md)
DATABASE_RATE_MIB = 50.0


class Throttle:
    """Shared by every connection: at most `rate` bytes a second in all, measured from the
    first byte (a token bucket one second deep)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.allowed_at = time.monotonic()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(self.allowed_at, now - 1.0)
            self.allowed_at = start + n / self.rate
            wait = self.allowed_at - now
        if wait > 0:
            time.sleep(wait)


class Forwarder:
    """Listens on a free 127.0.0.1 port (address) and forwards each connection to target
    (host:port), the client's bytes at most `rate` a second (0: no limit)."""

    def __init__(self, target: str, rate: float) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host.strip("[]") or "127.0.0.1", int(port))
        self.throttle = Throttle(rate) if rate > 0 else None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.closed = threading.Event()
        self.accepting: threading.Thread | None = None
        self.uploads: list[threading.Thread] = []
        self.answers: list[threading.Thread] = []
        self.answered = False  # every connection's server side closed, by the end
        self.lock = threading.Lock()
        self.sent = 0  # client bytes forwarded, for the record

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self) -> Forwarder:
        self.accepting = self._spawn(self._accept)
        return self

    def __exit__(self, *_exc: object) -> None:
        """Returns once every byte a client sent has reached the target. A client (the
        restore tool) connects, writes its shard and exits before we accept: its connection
        waits in the listen backlog, and closing the listener then would drop it, and the
        shard, with the tool already gone and saying it succeeded (seen under load: a
        restored database with an empty shard). So the backlog is drained first."""
        self.closed.set()
        self._drain_backlog()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(): close alone does not
        with contextlib.suppress(OSError):
            self.listener.close()
        if self.accepting is not None:
            self.accepting.join(5)
        with self.lock:
            uploads = list(self.uploads)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        for thread in uploads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in uploads):
            raise TimeoutError(
                f"the upload through the forwarder to {self.target[0]}:{self.target[1]} "
                f"did not finish within {DRAIN_TIMEOUT:g}s"
            )
        # The server closes a connection once it is done with what it was sent: for a shard,
        # its files in place and its series in the index. Waiting for that, rather than
        # guessing from the outside, costs the live server nothing.
        with self.lock:
            answers = list(self.answers)
        for thread in answers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.answered = not any(thread.is_alive() for thread in answers)

    def _drain_backlog(self) -> None:
        self.listener.setblocking(False)
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # BlockingIOError: none waiting
                return
            client.setblocking(True)
            self._connect(client)

    def _spawn(self, target: object, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        return thread

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=30)
            server.settimeout(None)
        except OSError:
            client.close()
            return
        upload = self._spawn(self._pump, client, server, True)
        answer = self._spawn(self._pump, server, client, False)
        with self.lock:
            self.uploads.append(upload)
            self.answers.append(answer)

    def _pump(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                if upload:
                    if self.throttle is not None:
                        self.throttle.take(len(data))
                    self.sent += len(data)
                try:
                    dst.sendall(data)
                except OSError:
                    if upload:
                        raise
                    # the tool is gone (it does not wait for the server's end): read on to
                    # the server's close, which tells that it is done
                    while src.recv(CHUNK):
                        pass
                    break
        except OSError:
            pass
        finally:
            # half-close: the other direction may still carry the answer
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RD)
            if not upload:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.close()
