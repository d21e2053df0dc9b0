"""Flush-behind for the files the live server writes while it takes a database in.

influxd writes each imported TSM file out whole and fsyncs it at its end: tens of MiB of dirty
pages hit the disk at once, and the fsync of the server's own WAL, on the same disk, waits
behind them (its write p99 grew 10x at 50 MiB/s; bench/fsync_interference.py reproduces it
without influxd). Starting the writeback of each file's new bytes as they arrive, as
PostgreSQL's *_flush_after settings do for its own files, turns those bursts into a steady
stream the WAL's small fsyncs slip between (p99 17x -> 2.4x in that bench at 50 MiB/s).

sync_file_range(SYNC_FILE_RANGE_WRITE) only starts writeback, waits for nothing and works on a
read-only descriptor: we touch neither the files' contents nor influxd's own sync.
INFLUX_BACKUPD_FLUSH_BEHIND=off turns it off, for bench/restore_database.py's comparison.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

SYNC_FILE_RANGE_WRITE = 2
# Start writeback once a file has this many new bytes; the directory is looked at every
# INTERVAL seconds (at 50 MiB/s, about 1 MiB a look).
CHUNK = 256 << 10
INTERVAL = 0.02
SWITCH = "INFLUX_BACKUPD_FLUSH_BEHIND"


def _sync_file_range() -> Callable[[int, int, int], int] | None:
    """libc's sync_file_range, or None where there is none (not Linux, no glibc/musl name)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, length: int) -> int:
        return int(function(fd, offset, length, SYNC_FILE_RANGE_WRITE))

    return start_writeback


class FlushBehind:
    """While in use, starts the writeback of what is appended to any file under root (which
    may not exist yet). Best effort: a file renamed or removed under us is skipped; nothing
    here can fail the restore."""

    def __init__(self, root: Path, chunk: int = CHUNK, interval: float = INTERVAL) -> None:
        self.root, self.chunk, self.interval = root, chunk, interval
        self.start_writeback = _sync_file_range()
        self.flushed: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> bytes pushed
        self.pushed = 0  # bytes whose writeback we started, for the record
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> FlushBehind:
        if self.start_writeback is not None and os.environ.get(SWITCH) != "off":
            self.thread = threading.Thread(target=self._run, name="flush-behind", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.look()

    def look(self) -> None:
        """One pass over the tree: push what grew by at least a chunk since the last pass.
        Files gone since are forgotten: a new file may get a removed one's inode number (a
        compaction replacing files), and must not be taken for it, grown by what it holds."""
        seen: dict[tuple[int, int], int] = {}
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                with contextlib.suppress(OSError):
                    self._push(os.path.join(dirpath, name), seen)
        self.flushed = seen

    def _push(self, path: str, seen: dict[tuple[int, int], int]) -> None:
        assert self.start_writeback is not None
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return
        key = (st.st_dev, st.st_ino)
        done = self.flushed.get(key, 0)
        if st.st_size < done:  # cut down, or another file in its place between two looks
            done = 0
        seen[key] = done
        if st.st_size - done < self.chunk:
            return
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if self.start_writeback(fd, done, st.st_size - done) == 0:
                self.pushed += st.st_size - done
            seen[key] = st.st_size
        finally:
            os.close(fd)
