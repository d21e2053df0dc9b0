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
        self.threads: list[threading.Thread] = []
        self.sent = 0  # client bytes forwarded, for the record

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self) -> Forwarder:
        self._spawn(self._accept)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(): close alone does not
        with contextlib.suppress(OSError):
            self.listener.close()
        for thread in list(self.threads):
            thread.join(5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=30)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

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
                dst.sendall(data)
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
