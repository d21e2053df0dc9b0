"""Archive and restore progress for whoever listens (the CLI's terminal bar, a systemd unit's
status); the jobs and restores only call notify()."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from influx_backupd.core import log, systemd
from influx_backupd.core.atomic import read_ours_text, replace_json
from influx_backupd.core.jsontext import loads_json
from influx_backupd.core.processes import own_identity, same_as

# (bytes done, bytes expected), and files=(done, expected) when the emitter counts files
Listener = Callable[..., None]

_listeners: list[Listener] = []


def listen(listener: Listener) -> None:
    _listeners.append(listener)


def unlisten(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def notify(done: int, total: int, files: tuple[int, int] | None = None) -> None:
    """Called for every chunk written: listeners must be cheap (the bar throttles itself)."""
    for listener in list(_listeners):
        with contextlib.suppress(Exception):  # a broken display never fails a backup
            if files is None:
                listener(done, total)
            else:
                listener(done, total, files=files)


def ended() -> None:
    """What was being counted is all written: a listener that draws (the terminal bar) clears
    itself now, not at the command's end, or the later log lines (influxd's start, the run's
    end, prune) would each redraw a stale bar below them. A later notify draws it again."""
    for listener in list(_listeners):
        close = getattr(listener, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


def describe(done: int, total: int, files: tuple[int, int] | None = None) -> str:
    """ "1.0 MiB / 2.0 MiB, 3/10 files": for a status line."""
    text = f"{_size(done)} / {_size(total)}"
    return text + (f", {files[0]}/{files[1]} files" if files is not None else "")


EXTEND_EVERY = 10.0  # seconds between two EXTEND_TIMEOUT_USEC while a long command runs
EXTEND_BY = 60.0


@contextlib.contextmanager
def under_systemd(what: str, every: float = EXTEND_EVERY, by: float = EXTEND_BY) -> Iterator[None]:
    """While a long command (a restore) runs under a systemd unit (NOTIFY_SOCKET set): ask for
    `by` more seconds every `every` seconds (EXTEND_TIMEOUT_USEC), so that the unit's start or
    stop timeout does not kill it half-way, and show its progress as the unit's STATUS=."""
    if not os.environ.get("NOTIFY_SOCKET"):
        yield
        return
    state = {"line": what}

    def listener(done: int, total: int, files: tuple[int, int] | None = None) -> None:
        state["line"] = f"{what}: {describe(done, total, files)}"

    def tell() -> None:
        systemd.extend_timeout(by)
        systemd.status(state["line"])

    listen(listener)
    try:
        with repeating(every, tell, now=True):
            yield
    finally:
        unlisten(listener)
        systemd.status(f"{what}: finished")


RUNNING_FILE = "restore-progress.json"  # in state_dir while a restore runs, for `status`


@contextlib.contextmanager
def published(path: Path, what: str, every: float = 2.0) -> Iterator[None]:
    """While a long command (a restore) runs: its progress in path (JSON, rewritten every
    `every` seconds, removed at the end), which `status` shows. pid and create_time let a reader
    tell a file left by a process killed outright."""
    state: dict[str, Any] = {
        "what": what,
        **own_identity(),
        "started_at": time.time(),
        "done": 0,
        "total": 0,
        "files": None,
    }

    def listener(done: int, total: int, files: tuple[int, int] | None = None) -> None:
        state.update(done=done, total=total, files=list(files) if files else None)

    def write() -> None:
        with contextlib.suppress(OSError):  # a status that cannot be written fails nothing
            replace_json(path, {**state, "updated_at": time.time()}, durable=False)

    listen(listener)
    try:
        with repeating(every, write, now=True):
            yield
    finally:
        unlisten(listener)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def read_published(path: Path) -> dict[str, Any] | None:
    """A running command's published progress; None when there is none or its writer is gone."""
    try:
        state = loads_json(read_ours_text(path))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    if same_as(state) is None:
        return None
    return state


@contextlib.contextmanager
def repeating(every: float, action: Callable[[], None], *, now: bool = False) -> Iterator[None]:
    """action() every `every` seconds in a thread while the body runs (first at once if now)."""
    stop = threading.Event()

    def loop() -> None:
        if now:
            action()
        while not stop.wait(every):
            action()

    thread = threading.Thread(target=loop, name="progress-repeating", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


MIN_BAR = 10  # a bar narrower than this says nothing the percentage does not


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
        label: str = "archive",
        width: int = 30,
        interval: float = 0.2,
        window: float = 5.0,
        settle: float = 2.0,
    ) -> None:
        self.show = show
        self.label = label
        self.files: tuple[int, int] | None = None
        self.width = width
        self.interval = interval
        self.window = window
        self.settle = settle
        self.first: float | None = None  # when the first bytes were reported
        self.samples: deque[tuple[float, int]] = deque()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int, files: tuple[int, int] | None = None) -> None:
        self.files = files
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

    def line(self, done: int, total: int, rate: float | None, columns: int | None = None) -> str:
        """One row that fits a terminal `columns` wide (default: the console's width now): the
        bar shrinks first, then the least telling parts go (files, sizes, rate, label), so a
        narrow terminal still sees the percentage and the ETA and the row never wraps."""
        # The prediction is taken before the stop; files may have grown since.
        fraction = min(done / total, 1.0) if total > 0 else 0.0
        speed = f"{_size(rate)}/s" if rate is not None else "-/s"
        eta = f"{(total - done) / rate:.0f}s" if rate and total > done else "-"
        parts = {
            "label": self.label,
            "percent": f"{fraction * 100:5.1f}%",
            "sizes": f"{_size(done)} / {_size(total)}",
            "files": f"{self.files[0]}/{self.files[1]} files" if self.files is not None else "",
            "speed": speed,
            "eta": f"ETA {eta}",
        }
        room = (columns if columns is not None else log.status_columns()) - 1
        for drop in ("", "files", "sizes", "speed", "label"):
            parts.pop(drop, None)
            width = min(self.width, room - len(self._join(parts, "[]")))
            if width >= MIN_BAR:
                filled = int(fraction * width + 0.5)  # as the percentage rounds: 100.0% is full
                return self._join(parts, f"[{'#' * filled}{'.' * (width - filled)}]")
        return log.fit(self._join(parts, ""), room + 1)  # not even the bar fits

    @staticmethod
    def _join(parts: dict[str, str], bar: str) -> str:
        head = " ".join(p for p in (parts.get("label", ""), bar, parts["percent"]) if p)
        tail = [parts.get(k, "") for k in ("sizes", "files", "speed", "eta")]
        return "  ".join([head, *(p for p in tail if p)]).lstrip()

    def close(self) -> None:
        if self.drawn:
            self.show(None)
            self.drawn = False
