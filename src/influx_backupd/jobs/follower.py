"""Hashes a hot backup's output files while `influxd backup` writes them, a few milliseconds
behind the tool, on the second core: the read-back for sha256 and the writeback cost nothing
after the tool exits. Why a file being written can be hashed: Follower's docstring."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path

from influx_backupd.store.archive import CHUNK
from influx_backupd.store.scanners import (
    FileDigest,
    file_signature,
)

# Date has whole seconds and the request takes a moment: beyond this, the clocks really differ.


class Followed:
    """One output file as the follower reads it: bytes hashed so far, front to back."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self.hashed = 0
        self.unsynced = 0
        self.stat: tuple[int, int, int, int, int] | None = None  # describes the bytes hashed
        # Seen once with a new mtime but no new bytes: a write may be under way (write() sets
        # the mtime before it extends the size), or the file was rewritten in place.
        self.suspect = False


class Follower:
    """Hashes (and starts writing back) the tool's output files while the tool writes them.

    After `influxd backup -portable` exits, reading 1.9 GB back for sha256 cost about 1.7 s, the
    fsync of that much fresh page cache about 1 s more, against 3.5 s for the tool itself. Both
    run here instead, on the second core, a few milliseconds behind the tool.

    Why a file being written can be hashed: influxd writes each output file once, front to back,
    and never seeks back (Go's gzip.Writer over an os.File opened in a brand-new directory;
    strace shows plain sequential writes, no truncate, no rename onto a final name). So the bytes
    before the end of a file do not change again, and hashing up to the current end, then
    continuing from there, gives the digest of the finished file. Each file is read through one
    descriptor, up to the size of a stat taken just before; that stat is kept with the digest,
    and scan_portable uses a digest only when the file's device, inode, size, mtime_ns and
    ctime_ns are still exactly that after the tool has exited. A file replaced, truncated or written without growing (mtime
    moved, size did not) is dropped here and read again in full by scan_portable. Hashing only
    files the tool has finished would have been simpler, but influxd 1.6 writes the shards one at
    a time, and a server often holds one or two large shards: the last file is most of the bytes.

    Only final names are followed (*.tar.gz, *.meta): the tool's .pending files and the plain
    shard tar it gzips from are deleted before it exits, and hashing them would be wasted work.
    """

    POLL_S = 0.02
    # fdatasync after this many new bytes, on a thread of its own: the final fsync finds little
    # left, and hashing never waits for the disk (it fell behind the tool when it did).
    SYNC_EVERY = 64 << 20

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, Followed] = {}
        self.dropped: set[str] = set()
        self.failed: str | None = None  # why the follower gave up; scan_portable then reads all
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hot-follow", daemon=True)
        self._syncs: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # dup'd fds, None: done
        self._syncer = threading.Thread(target=self._sync_loop, name="hot-sync", daemon=True)

    def __enter__(self) -> Follower:
        self._thread.start()
        self._syncer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._syncs.put(None)
        self._syncer.join()
        for followed in self.files.values():
            os.close(followed.fd)
        self.files.clear()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._pass():
                    self._stop.wait(self.POLL_S)
        except OSError as exc:
            self.failed = str(exc)

    def _sync_loop(self) -> None:
        while (fd := self._syncs.get()) is not None:
            try:
                os.fdatasync(fd)
            except OSError:
                pass  # only a head start: the run's own fsync of every file reports errors
            finally:
                os.close(fd)

    def finish(self) -> dict[str, FileDigest]:
        """Once the tool has exited: the rest of every file, and the digests taken."""
        self._stop.set()
        self._thread.join()
        if self.failed is not None:
            return {}
        try:
            self._pass(final=True)
        except OSError as exc:
            self.failed = str(exc)
            return {}
        return {
            name: FileDigest(f.hashed, f.digest.hexdigest(), f.stat)
            for name, f in self.files.items()
            if f.stat is not None and f.stat[2] == f.hashed
        }

    def _pass(self, final: bool = False) -> bool:
        """Read whatever was appended since the last pass; True when anything was.

        final: the tool has exited, so no write is under way any more."""
        progressed = False
        for entry in os.scandir(self.directory):
            name = entry.name
            if name in self.dropped or not name.endswith((".tar.gz", ".meta")):
                continue
            followed = self.files.get(name)
            if followed is None:
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue
                followed = self.files[name] = Followed(fd)
            now = self._appended_only(name, followed, entry.path, final)
            if now is None:
                continue
            # Up to the size seen before reading: the stat kept describes exactly these bytes,
            # so any later write shows as another size or mtime.
            while followed.hashed < now.st_size:
                data = os.pread(
                    followed.fd, min(CHUNK, now.st_size - followed.hashed), followed.hashed
                )
                if not data:
                    break  # truncated meanwhile: the next pass drops the file
                followed.digest.update(data)
                followed.hashed += len(data)
                followed.unsynced += len(data)
                progressed = True
                if followed.unsynced >= self.SYNC_EVERY:
                    self._syncs.put(os.dup(followed.fd))
                    followed.unsynced = 0
            followed.stat = file_signature(now)
        return progressed

    def _appended_only(
        self, name: str, followed: Followed, path: str, final: bool
    ) -> os.stat_result | None:
        """The file's stat now, when it only grew at its end since the last pass; None when it
        is to be skipped this pass: dropped (replaced, shrunk, rewritten in place), or seen
        with a new mtime and no new bytes while the tool may be half-way through a write
        (write() sets the mtime before it extends the size): looked at again next pass."""
        now = os.fstat(followed.fd)
        try:
            named = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        replaced = named is None or (named.st_dev, named.st_ino) != (now.st_dev, now.st_ino)
        before = followed.stat
        touched = before is not None and now.st_size == before[2] and file_signature(now) != before
        if touched and not replaced and not final and not followed.suspect:
            followed.suspect = True
            return None
        if replaced or now.st_size < followed.hashed or touched:
            os.close(followed.fd)
            del self.files[name]
            self.dropped.add(name)
            return None
        followed.suspect = False
        return now
