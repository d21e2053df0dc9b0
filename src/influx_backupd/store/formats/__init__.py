"""Readers that check InfluxDB's on-disk formats inside a backup archive: Bolt, TSM, WAL, and
1.5+'s series files, TSI index files, index MANIFESTs and fields.idx.

Each checker takes a seekable binary stream plus its size and returns a list of
``Finding``s instead of raising: ``verify`` wants every problem in an archive, not the
first one. ``check_archive`` reads an uncompressed tar once, front to back: each byte feeds
the archive's sha256 (when asked for) and, for a member a checker wants, that checker, in
memory, on worker threads; nothing is extracted to disk.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import io
import os
import tarfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, cast

from influx_backupd.store.formats.bolt import check_bolt
from influx_backupd.store.formats.findings import Finding, read_at, stoppable
from influx_backupd.store.formats.meta import check_meta_db
from influx_backupd.store.formats.series import (
    SeriesFiles,
    check_segment,
    check_series_index,
    is_segment_name,
)
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.formats.tsi import (
    IndexListing,
    check_fields,
    check_tsi,
    check_tsl,
)
from influx_backupd.store.formats.tsm import check_tsm
from influx_backupd.store.formats.wal import check_wal, check_wal_buffer

__all__ = [
    "CHECK_THREADS",
    "ArchiveReport",
    "Finding",
    "check_archive",
    "classify_member",
    "read_at",
]

ARCHIVE_MEMBER = "<archive>"
BOLT_MAGIC_LE = (0xED0CDAED).to_bytes(4, "little")
# Threads that run the checks (snappy decoding and sha256 release the GIL; the main thread
# reads and hashes): about two cores at full speed, never more than the process may use.
CHECK_THREADS = max(1, min(2, len(os.sched_getaffinity(0))))
# A checked member up to this size is read into memory once and checked there (WAL segments
# are 10 MiB); a larger one is hashed as it is read and checked from the archive (a second
# read, of the parts its checker needs).
HOLD_MAX = 16 << 20
# Members held for the checks at once, in bytes (besides the one being read): bounds memory.
IN_FLIGHT_MAX = 64 << 20
_READ = 4 << 20

# Also the words verify's summary counts them by.
Format = Literal[
    "tsm",
    "wal",
    "bolt",
    "series",
    "series index",
    "tsi",
    "tsl",
    "MANIFEST",
    "fields.idx",
    "meta.db",
]


@dataclass
class ArchiveReport:
    findings: list[Finding] = field(default_factory=list)
    members: int = 0
    top_dirs: set[str] = field(default_factory=set)
    checked: dict[str, int] = field(default_factory=dict)
    unread: dict[str, int] = field(default_factory=dict)  # regular members no checker reads
    sha256: str | None = None  # of the whole file, when asked for and it could all be read
    # every member read up to the end-of-archive marker: only then does a member not seen tell
    # that it is missing, rather than that the archive is cut short or unreadable before it
    read_whole: bool = False

    def not_read(self, name: str) -> None:
        """Count a regular member no checker reads, by its extension, for the summary."""
        label = os.path.splitext(name)[1] or "other"
        self.unread[label] = self.unread.get(label, 0) + 1

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        """Warnings (e.g. a WAL torn tail) do not make an archive bad; errors do."""
        return not self.errors


def _normalise(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name


def classify_member(name: str) -> Format | Literal["bolt?"] | None:
    """Which checker a member name calls for; "bolt?" means: bolt if its bytes say so."""
    name = _normalise(name)
    parts = name.split("/")
    base = parts[-1]
    if base.endswith(".tsm"):
        return "tsm"
    if parts[0] == "wal" and base.startswith("_") and base.endswith(".wal"):
        return "wal"
    # 1.x meta/meta.db is protobuf, not bolt; only 0.9's raft log is a bolt file.
    if name == "meta/raft.db":
        return "bolt"
    if name == "meta/meta.db":
        return "meta.db"
    if parts[0] == "data" and len(parts) == 5 and parts[2] == "_series":  # DB/_series/PP/file
        return "series" if is_segment_name(base) else "series index" if base == "index" else None
    if parts[0] == "data" and len(parts) == 7 and parts[4] == "index":  # DB/RP/ID/index/N/file
        return (
            "tsi"
            if base.endswith(".tsi")
            else "tsl"
            if base.endswith(".tsl")
            else ("MANIFEST" if base == "MANIFEST" else None)
        )
    if parts[0] == "data" and len(parts) == 5 and base == "fields.idx":
        return "fields.idx"
    # 0.9 shards: data/<db>/<rp>/<shard-id>, a bolt file with no extension. 1.x has
    # directories there, so the magic check decides.
    if len(parts) == 4 and parts[0] == "data" and "." not in base and base:
        return "bolt?"
    return None


def _check_member(
    kind: Format, stream: BinaryIO, size: int, member: str, deep: bool
) -> list[Finding]:
    try:
        return _run_checker(kind, stream, size, member, deep)
    except MemoryError:  # checkers read in windows; a finding, should one still not fit
        return [Finding("error", member, f"not checked: out of memory for its {size} bytes")]


def _run_checker(
    kind: Format, stream: BinaryIO, size: int, member: str, deep: bool
) -> list[Finding]:
    if kind == "tsm":
        return check_tsm(stream, size, member, deep=deep)
    if kind == "wal":
        return check_wal(stream, size, member, deep=deep)
    if kind == "series":
        return check_segment(stream, size, member, deep=deep)
    if kind == "series index":
        return check_series_index(stream, size, member)
    if kind == "tsi":
        return check_tsi(stream, size, member)
    if kind == "tsl":
        return check_tsl(stream, size, member)
    if kind == "fields.idx":
        return check_fields(stream, size, member)
    if kind == "meta.db":
        return check_meta_db(stream, size, member)
    return check_bolt(stream, size, member)


def _check_held(kind: Format, data: bytes, member: str, deep: bool) -> list[Finding]:
    if kind == "wal":
        return check_wal_buffer(data, member, deep=deep)
    return _check_member(kind, io.BytesIO(data), len(data), member, deep)


def check_archive(path: Path, *, deep: bool = False, sha256: bool = False) -> ArchiveReport:
    """Check every recognised member of an uncompressed tar archive, in one pass.

    sha256: also hash the whole file from the same reads (report.sha256)."""
    report = ArchiveReport()
    try:
        with open(path, "rb") as raw:
            digest = _Digest(raw.fileno(), sha256)
            pool = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="verify")
            stop = threading.Event()
            try:
                _scan(raw, deep, report, _Checks(pool, report, stop), digest)
            except BaseException:
                # Interrupted (a SIGTERM): end the checks still running at their next read
                # and drop those not begun, rather than wait for them (it could be minutes)
                stop.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
            if sha256:
                digest.to_end()
                report.sha256 = digest.hexdigest()
    except OSError as exc:
        report.findings.append(
            Finding("error", ARCHIVE_MEMBER, f"cannot read {path}: {exc.strerror or exc}")
        )
    return report


class _Digest:
    """sha256 of the file's bytes in order; bytes read for a check are passed in, not read again.

    Disabled, it only reads what is handed to it (nothing)."""

    def __init__(self, fd: int, enabled: bool) -> None:
        self.fd = fd
        self._hash = hashlib.sha256() if enabled else None
        self.pos = 0  # every byte before this one is hashed

    def upto(self, end: int) -> None:
        """Read and hash up to offset end (headers, members no checker reads)."""
        while self._hash is not None and self.pos < end:
            chunk = os.pread(self.fd, min(_READ, end - self.pos), self.pos)
            if not chunk:
                return  # the file is shorter: to_end and the tar walk say so
            self._hash.update(chunk)  # OpenSSL, without the GIL: the checks run meanwhile
            self.pos += len(chunk)

    def to_end(self) -> None:
        self.upto(1 << 62)

    def read(self, offset: int, size: int) -> bytes:
        """size bytes at offset (fewer at the end of the file), hashed if they are next."""
        self.upto(offset)
        parts = []
        pos, end = offset, offset + size
        while pos < end:
            chunk = os.pread(self.fd, end - pos, pos)
            if not chunk:
                break
            parts.append(chunk)
            pos += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._hash is not None and self.pos == offset:
            self._hash.update(data)
            self.pos += len(data)
        return data

    def hexdigest(self) -> str | None:
        return self._hash.hexdigest() if self._hash is not None else None


class _Region:
    """A member read in place from the archive's descriptor: seek and read, as read_at uses
    them. pread keeps no shared file offset, so workers and the hashing thread read at once."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._offset, self.size = fd, offset, size
        self._pos = 0

    def copy(self) -> _Region:
        """The same member with its own position: a region is read by one thread at a time."""
        twin = copy.copy(self)
        twin._pos = 0
        return twin

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self._pos = pos if whence == os.SEEK_SET else self._pos + pos
        return self._pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self._pos if n < 0 else min(n, self.size - self._pos)
        data = os.pread(self._fd, n, self._offset + self._pos) if n > 0 else b""
        self._pos += len(data)
        return data


class _SparseRegion(_Region):
    """A member with holes, read in place: its runs' bytes lie one after another from offset
    (as tarfile maps them), zeros between them. Not tarfile's reader: it reads a seek back as
    zeros after the (0, 0) entries GNU tar pads an old-style sparse map with."""

    def __init__(self, fd: int, offset: int, size: int, runs: list[tuple[int, int]]) -> None:
        super().__init__(fd, offset, size)
        self._runs: list[tuple[int, int, int]] = []  # (start, end, where its bytes are stored)
        stored = offset
        for start, length in sorted(r for r in runs if r[1]):
            self._runs.append((start, start + length, stored))
            stored += length
        self._ends = [end for _, end, _ in self._runs]

    def read(self, n: int = -1) -> bytes:
        pos = self._pos
        n = self.size - pos if n < 0 else max(0, min(n, self.size - pos))
        out = bytearray(n)
        for start, end, stored in self._runs[bisect.bisect_right(self._ends, pos) :]:
            if start >= pos + n:
                break
            lo, hi = max(start, pos), min(end, pos + n)
            chunk = os.pread(self._fd, hi - lo, stored + lo - start)
            out[lo - pos : lo - pos + len(chunk)] = chunk
        self._pos += n
        return bytes(out)


class _Checks:
    """Checks on worker threads, their findings kept in member order; at most IN_FLIGHT_MAX
    bytes of members wait or run at once."""

    def __init__(
        self, pool: ThreadPoolExecutor, report: ArchiveReport, stop: threading.Event
    ) -> None:
        self._pool = pool
        self._report = report
        self._stop = stop
        self._pending: deque[tuple[int, Future[list[Finding]] | list[Finding]]] = deque()
        self._held = 0

    def submit(self, kind: Format, data: bytes, member: str, deep: bool) -> None:
        while self._pending and self._held + len(data) > IN_FLIGHT_MAX:
            self._collect_one()
        self._pending.append(
            (
                len(data),
                self._pool.submit(stoppable, self._stop, _check_held, kind, data, member, deep),
            )
        )
        self._held += len(data)

    def submit_region(self, kind: Format, region: _Region, member: str, deep: bool) -> None:
        stream = cast(BinaryIO, region)
        future = self._pool.submit(
            stoppable, self._stop, _check_member, kind, stream, region.size, member, deep
        )
        self._pending.append((0, future))

    def add(self, findings: list[Finding]) -> None:
        """Findings made on this thread, in their place among the pending ones."""
        self._pending.append((0, findings))

    def collect(self) -> None:
        while self._pending:
            self._collect_one()

    def _collect_one(self) -> None:
        size, outcome = self._pending.popleft()
        self._held -= size
        self._report.findings.extend(outcome if isinstance(outcome, list) else outcome.result())


class _Truncated(Exception):
    pass


def _scan(
    raw: BinaryIO, deep: bool, report: ArchiveReport, checks: _Checks, digest: _Digest
) -> None:
    def archive_error(message: str) -> None:
        report.findings.append(Finding("error", ARCHIVE_MEMBER, message))

    archive_size = os.fstat(raw.fileno()).st_size
    listing = IndexListing()
    series_files = SeriesFiles()
    opened = False
    try:
        try:
            with tarfile.open(fileobj=raw, mode="r:", tarinfo=CheckedTarInfo) as tar:
                opened = True
                for info in tar:
                    _check_one(
                        info, archive_size, deep, report, checks, digest, listing, series_files
                    )
                end = tar.offset
        except Exception:
            checks.collect()  # every member's findings before the archive's own
            raise
        checks.collect()  # not in a finally: interrupted, no check is waited for
    except _Truncated as exc:
        return archive_error(str(exc))
    except (tarfile.TarError, OSError, EOFError) as exc:
        if not opened:
            return archive_error(f"not a readable uncompressed tar archive: {exc}")
        return archive_error(
            f"archive unreadable after {report.members} members (truncated or corrupt): {exc}"
        )
    report.findings[:] = listing.judge_logs(report.findings)  # an older log's torn tail
    report.findings.extend(listing.findings())  # a MANIFEST against the members beside it
    report.findings.extend(series_files.findings(deep))  # a series index against its segments
    # tarfile stops quietly at a missing or garbled header, so a tar cut at a member
    # boundary would look complete. Tar writers always end an archive with two zero
    # blocks: insist on them.
    marker = read_at(raw, end, 2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.count(0) != len(marker):
        archive_error(
            f"no end-of-archive marker at offset {end} after {report.members} members: "
            "the archive is truncated or corrupt"
        )
    else:
        report.read_whole = True
    return None


def _check_one(
    info: tarfile.TarInfo,
    archive_size: int,
    deep: bool,
    report: ArchiveReport,
    checks: _Checks,
    digest: _Digest,
    listing: IndexListing,
    series_files: SeriesFiles,
) -> None:
    name = _normalise(info.name)
    report.members += 1
    if name:
        report.top_dirs.add(name.split("/", 1)[0])
    if not info.isreg():
        return
    # a file with holes (store/sparse.py) stores only its runs; formats/ imports nothing else
    runs = cast("list[tuple[int, int]] | None", info.sparse)  # typeshed says bytes
    stored = info.size if runs is None else sum(length for _, length in runs)
    if info.offset_data + stored > archive_size:
        raise _Truncated(
            f"member {name} needs {stored} bytes at offset {info.offset_data} but the "
            f"archive is only {archive_size} bytes: the archive is truncated"
        )
    listing.saw(name)
    kind = classify_member(name)
    if kind == "bolt?":
        kind = "bolt" if os.pread(digest.fd, 4, info.offset_data + 16) == BOLT_MAGIC_LE else None
    if kind is None:
        report.not_read(name)
        return
    if kind == "MANIFEST":  # small, and the listing needs it: read here, on this thread
        checks.add(listing.manifest(digest.read(info.offset_data, info.size), name))
        report.checked[kind] = report.checked.get(kind, 0) + 1
        return
    region = (
        _Region(digest.fd, info.offset_data, info.size)
        if runs is None
        else _SparseRegion(digest.fd, info.offset_data, info.size, runs)
    )
    if kind in ("series", "series index"):  # read again at the end, each against the others
        series_files.saw(name, cast(BinaryIO, region.copy()), info.size)
    if runs is not None:  # a file with holes: checked from its runs, as tarfile maps them
        digest.upto(info.offset_data + stored)
        checks.submit_region(kind, region, name, deep)
    elif info.size <= HOLD_MAX:
        data = digest.read(info.offset_data, info.size)
        if len(data) < info.size:  # the file shrank since the walk began
            checks.add([Finding("error", name, f"data ends before its {info.size} bytes")])
        else:
            checks.submit(kind, data, name, deep)
    else:
        # checked on a worker from the archive (e.g. a TSM file's index and, deep, its blocks)
        # while this thread hashes on
        checks.submit_region(kind, region, name, deep)
    report.checked[kind] = report.checked.get(kind, 0) + 1
