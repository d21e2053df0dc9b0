"""Archive progress for whoever listens (the CLI's terminal bar); the jobs only call notify()."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

from influx_backupd.core import log

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
    """The archive's progress as the console's status line (core.log keeps log lines above it),
    redrawn at most every `interval` seconds.

    The rate is that of the last `window` seconds of archive writing (not since the command
    started: the stop and the staging come first), and neither rate nor ETA is shown before
    `settle` seconds of writing have given a rate worth dividing by.
    """

    def __init__(
        self,
        show: Callable[[str | None], None] = log.status_line,
        width: int = 30,
        interval: float = 0.2,
        window: float = 5.0,
        settle: float = 2.0,
    ) -> None:
        self.show = show
        self.width = width
        self.interval = interval
        self.window = window
        self.settle = settle
        self.first: float | None = None  # when the first bytes were reported
        self.samples: deque[tuple[float, int]] = deque()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
            self.samples.append((now, done))
        if now - self.last < self.interval:
            return
        self.last = now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        self.show(self.line(done, total, self.rate(now, done)))
        self.drawn = True

    def rate(self, now: float, done: int) -> float | None:
        """Bytes a second over the recent window; None until `settle` seconds of writing."""
        if self.first is None or now - self.first < self.settle:
            return None
        since, then = self.samples[0]
        return (done - then) / (now - since) if now > since else None

    def line(self, done: int, total: int, rate: float | None) -> str:
        # The prediction is taken before the stop; files may have grown since.
        fraction = min(done / total, 1.0) if total > 0 else 0.0
        filled = int(fraction * self.width)
        speed = f"{_size(rate)}/s" if rate is not None else "-/s"
        eta = f"{(total - done) / rate:.0f}s" if rate and total > done else "-"
        return (
            f"archive [{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% "
            f"{_size(done)} / {_size(total)}  {speed}  ETA {eta}"
        )

    def close(self) -> None:
        if self.drawn:
            self.show(None)
            self.drawn = False
