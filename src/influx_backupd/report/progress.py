"""Archive progress for whoever listens (the CLI's terminal bar); the jobs only call notify()."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TextIO

Listener = Callable[[int, int], None]  # (bytes done, bytes expected)

_listeners: list[Listener] = []


def listen(listener: Listener) -> None:
    _listeners.append(listener)


def unlisten(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def notify(done: int, total: int) -> None:
    """Called for every chunk written: listeners must be cheap (the bar throttles itself)."""
    for listener in _listeners:
        with contextlib.suppress(Exception):  # a broken display never fails a backup
            listener(done, total)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class TerminalBar:
    """A one-line bar redrawn in place with \\r, at most every `interval` seconds."""

    def __init__(self, stream: TextIO, width: int = 30, interval: float = 0.2) -> None:
        self.stream = stream
        self.width = width
        self.interval = interval
        self.started = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self.stream.write("\r" + self.line(done, total, now - self.started))
        self.stream.flush()
        self.drawn = True

    def line(self, done: int, total: int, elapsed: float) -> str:
        # The prediction is taken before the stop; files may have grown since.
        fraction = min(done / total, 1.0) if total > 0 else 0.0
        filled = int(fraction * self.width)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and total > done else "-"
        return (
            f"archive [{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% "
            f"{_size(done)} / {_size(total)}  {_size(rate)}/s  ETA {eta}   "
        )

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
