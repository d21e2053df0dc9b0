"""What a format checker reports, and how it reads: shared by the Bolt, TSM and WAL checkers and
the archive walk in this package's __init__, which imports them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Literal, TypeVar

_T = TypeVar("_T")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Finding:
    severity: Literal["error", "warning"]
    member: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.member}: {self.message}"


class Stopped(Exception):
    """The archive walk that runs this check was interrupted: the check ends at its next read."""


_local = threading.local()


@contextmanager
def stop_on(event: threading.Event) -> Iterator[None]:
    """Within: every read_at on this thread raises Stopped once event is set. A signal reaches
    only the main thread, so a check on a worker learns of it here; every checker reads
    through read_at in bounded pieces, so it stops within one piece."""
    _local.stop = event
    try:
        yield
    finally:
        _local.stop = None


def stoppable(event: threading.Event, check: Callable[..., _T], *args: object) -> _T:
    """check(*args) on a worker thread, stopped as stop_on says."""
    with stop_on(event):
        return check(*args)


def read_at(stream: BinaryIO, offset: int, n: int) -> bytes:
    """Read up to n bytes at offset; short only at end of data (raw streams may return less)."""
    stop: threading.Event | None = getattr(_local, "stop", None)
    if stop is not None and stop.is_set():
        raise Stopped
    stream.seek(offset)
    chunks: list[bytes] = []
    remaining = n
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class Window:
    """Reads a stream in 1 MiB pieces (never a whole member: one may be gigabytes, or a sparse
    one store a fraction of its size); get(pos, n) returns up to n bytes at pos."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self._stream, self.size = stream, size
        self._base, self._buf = 0, b""

    def get(self, pos: int, n: int) -> bytes:
        if pos < self._base or pos + n > self._base + len(self._buf):
            self._base = pos
            self._buf = read_at(self._stream, pos, min(max(n, _CHUNK), self.size - pos))
        start = pos - self._base
        return self._buf[start : start + n]
