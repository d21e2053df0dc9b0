"""Uncompressed tar archives: a streaming writer that hashes in the same pass, checks, safe extraction.

Why one module of this size: the writer, the read-back check and the safe extraction share one
notion of a safe member (the same rules for verify and restore) and must not drift apart.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import io
import os
import pwd
import queue
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from influx_backupd.core.atomic import fsync_dir
from influx_backupd.core.errors import BackupdError
from influx_backupd.store import layout, sparse
from influx_backupd.store.formats.tarinfo import CheckedTarInfo

CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough to keep RSS flat (and in L2)


class ArchiveError(BackupdError):
    code = "archive"
    pass


class UnsafeArchive(ArchiveError):
    pass


def _iov_max() -> int:
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (OSError, ValueError):
        limit = -1
    return limit if limit > 0 else 16  # POSIX's least


_IOV_MAX = _iov_max()


class _Out:
    """Writes to an fd while a second thread hashes the same bytes, in order.

    sha256 and the copy each take about as long as the other; hashlib and os.write both release
    the GIL, so overlapping them brings the writer close to GNU tar, which does not hash.
    Buffers come from a small ring and go back to it once written and hashed: memory stays flat.
    """

    def __init__(self, buffers: int = 4) -> None:
        self.fd = -1  # set once the partial file is open
        self.bytes = 0
        self._sha256 = hashlib.sha256()
        self._pending: list[bytes] = []  # tar headers and padding, written with the next data
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(memoryview(bytearray(CHUNK)))
        self._todo: queue.SimpleQueue[tuple[memoryview | bytes, memoryview | None] | None] = (
            queue.SimpleQueue()
        )
        self._hasher = threading.Thread(target=self._hash_loop, name="archive-sha256", daemon=True)
        self._hasher.start()

    def _hash_loop(self) -> None:
        while (job := self._todo.get()) is not None:
            data, give_back = job
            self._sha256.update(data)
            if give_back is not None:
                self._free.put(give_back)

    def buffer(self) -> memoryview:
        """A free CHUNK-sized buffer to read into; pass what was read to data()."""
        return self._free.get()

    def small(self, data: bytes) -> None:
        self.bytes += len(data)
        self._todo.put((data, None))
        self._pending.append(data)

    def data(self, buf: memoryview, n: int) -> None:
        view = buf[:n]
        self.bytes += n
        if self._pending:
            parts: list[bytes | memoryview] = [*self._pending, view]
            self._pending = []
            self._writev(parts)
        else:
            self._write(view)
        self._todo.put((view, buf))  # hashed after the write started; the ring gets it back

    def give_back(self, buf: memoryview) -> None:
        self._free.put(buf)

    def flush(self) -> None:
        if self._pending:
            parts: list[bytes | memoryview] = list(self._pending)
            self._pending = []
            self._writev(parts)

    def hexdigest(self) -> str:
        self.close()
        return self._sha256.hexdigest()

    def close(self) -> None:
        if self._hasher.is_alive():
            self._todo.put(None)
            self._hasher.join()

    def _write(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self.fd, view) :]

    def _writev(self, parts: list[bytes | memoryview]) -> None:
        # at most IOV_MAX buffers a call (EINVAL past it): a run of headers without data
        # (a server's thousand empty shard wal dirs) is more than that
        for start in range(0, len(parts), _IOV_MAX):
            batch = parts[start : start + _IOV_MAX]
            written = os.writev(self.fd, batch)
            if written < sum(len(p) for p in batch):  # short (signal, nearly full disk)
                self._write(memoryview(b"".join(bytes(p) for p in batch))[written:])


@dataclass
class WriteResult:
    path: Path
    bytes: int
    files: int  # regular files
    members: int  # every tar member, directories included
    sha256: str
    sizes: dict[str, int] = field(default_factory=dict)  # member name → size of regular files


def _raise(exc: OSError) -> None:
    raise exc


def _walk(root: Path, prefix: str) -> Iterator[tuple[Path, str, os.stat_result]]:
    """(path, member name, stat) for root and everything under it, sorted so archives are stable.

    root itself is followed: a configured dir or file that is a symlink (data -> /mnt/big/data,
    a common layout) is archived as what it points to, under its prefix; restore refuses a
    top-level member that is a link (and any link to an absolute path). Below root, links are
    archived as links (os.walk does not descend into symlinked dirs)."""
    st = os.stat(root)
    yield root, prefix, st
    if not stat.S_ISDIR(st.st_mode):
        return
    # onerror: os.walk skips a dir it cannot list quietly, which would archive it empty, ok
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        base = prefix if rel == "." else f"{prefix}/{rel}"
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath, name)
            yield path, f"{base}/{name}", os.lstat(path)


ProgressFn = Callable[[int], None]


@lru_cache(maxsize=64)
def _uname(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=64)
def _gname(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _tarinfo(path: Path, name: str, st: os.stat_result) -> tarfile.TarInfo | None:
    """The header tarfile's gettarinfo would make, except that hard links are stored as files
    (restore refuses hard-link members); None for sockets, fifos and devices."""
    info = tarfile.TarInfo(name)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    else:
        return None
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname, info.gname = _uname(st.st_uid), _gname(st.st_gid)
    info.mtime = st.st_mtime
    return info


# Errors that are about the filesystem written to: they name the file we wrote, not one we read.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def name_written(exc: OSError, path: Path) -> OSError:
    """exc with the path it happened writing, when it is a full filesystem and names none
    (write(2) and copy_file_range(2) errors carry no file name)."""
    if exc.filename is None and exc.errno in _FULL:
        return OSError(exc.errno, f"{exc.strerror} (writing)", str(path))
    return exc


def write_archive(
    dest: Path,
    sources: list[tuple[str, Path]],
    *,
    progress: ProgressFn | None = None,
    keep_holes: bool = True,
) -> WriteResult:
    """Write an uncompressed pax tar of sources (member prefix, path) to dest.

    keep_holes: a file with holes (store/sparse.py) is written as a PAX 1.0 sparse member, its
    data runs only; False: as a plain member, its holes as zeros (any tar reads it).

    Written as dest.partial (mode 0600), fsynced, renamed, then the directory fsynced:
    a crash never leaves a file under the final name that is not complete.
    Streams through one reusable buffer (flat memory whatever the data size) and hashes the
    bytes as they are written; headers come from tarfile, the data loop is ours (speed).
    """
    partial = layout.partial_of(dest)
    out = _Out()  # before the file exists: a signal while its thread starts leaves nothing behind
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except BaseException:
        out.close()
        raise
    out.fd = fd
    files = members = 0
    sizes: dict[str, int] = {}
    try:
        for prefix, root in sources:
            for path, name, st in _walk(root, prefix):
                info = _tarinfo(path, name, st)
                if info is None:
                    continue  # sockets, fifos and devices have no place in influxd's dirs
                members += 1
                if info.isreg():
                    _write_file(path, info, out, progress, keep_holes)
                    files += 1
                    sizes[name] = info.size
                else:
                    out.small(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        out.small(bytes(tarfile.BLOCKSIZE * 2))
        remainder = out.bytes % tarfile.RECORDSIZE
        if remainder:
            out.small(bytes(tarfile.RECORDSIZE - remainder))
        out.flush()
        os.fsync(fd)
        digest = out.hexdigest()
    except BaseException as exc:
        out.close()
        os.close(fd)
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and name_written(exc, partial) is not exc:
            raise name_written(exc, partial) from None
        raise
    os.close(fd)
    os.replace(partial, dest)
    fsync_dir(dest.parent)
    return WriteResult(dest, out.bytes, files, members, digest, sizes)


def _write_file(
    path: Path,
    info: tarfile.TarInfo,
    out: _Out,
    progress: ProgressFn | None,
    keep_holes: bool,
) -> None:
    """The member of the regular file path: its headers, exactly info.size bytes of it (data
    runs and map only, when it has holes worth keeping), then the padding to a whole block."""
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if keep_holes:
            runs = sparse.data_segments(fd, info.size)
            if sparse.worth_a_map(runs, info.size):
                holes = sparse.hole_bytes(runs, info.size)
                block_map = sparse.sparse_map(runs, info.size)
                stored = len(block_map) + info.size - holes
                out.small(sparse.sparse_header(info, stored))
                out.small(block_map)
                for offset, length in runs:
                    _copy_run(fh, path, offset, length, out, progress)
                if progress is not None:
                    progress(holes)
                # the map was read before the data: a file written meanwhile is not this one
                if sparse.data_segments(fd, info.size) != runs or os.fstat(fd).st_size != info.size:
                    raise ArchiveError(f"{path}: changed while being archived")
                _pad(out, stored)
                return
        out.small(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        _copy_run(fh, path, 0, info.size, out, progress)
    _pad(out, info.size)


def _copy_run(
    fh: io.FileIO, path: Path, offset: int, length: int, out: _Out, progress: ProgressFn | None
) -> None:
    """length bytes of the open file fh from offset into the archive."""
    fh.seek(offset)
    left = length
    while left > 0:
        buf = out.buffer()
        n = fh.readinto(buf[: min(len(buf), left)])
        if not n:
            out.give_back(buf)
            raise ArchiveError(f"{path}: shrank while being archived ({left} bytes missing)")
        out.data(buf, n)
        left -= n
        if progress is not None:
            progress(n)


def _pad(out: _Out, size: int) -> None:
    tail = size % tarfile.BLOCKSIZE
    if tail:
        out.small(bytes(tarfile.BLOCKSIZE - tail))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_written(result: WriteResult, allowed_tops: Set[str] | None) -> None:
    """The archive on disk is what we wrote: its size, and every member header with its size;
    and every member passes MemberCheck(allowed_tops), the rules verify and restore apply: a
    backup no restore would accept is never recorded ok (UnsafeArchive names the member).

    Reads tar headers only (uncompressed tar lets tarfile seek past contents), so this is cheap.
    """
    on_disk = result.path.stat().st_size
    if on_disk != result.bytes:
        raise ArchiveError(f"{result.path}: {on_disk} bytes on disk, {result.bytes} written")
    seen: dict[str, int] = {}
    count = 0
    check = MemberCheck(allowed_tops)
    try:
        with tarfile.open(result.path, "r:", tarinfo=CheckedTarInfo) as tar:
            for info in tar:
                try:
                    check(info)
                except UnsafeArchive as exc:
                    raise UnsafeArchive(f"{result.path}: restore would refuse it: {exc}") from None
                count += 1
                if info.isreg():
                    seen[info.name] = info.size
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{result.path}: cannot be read back: {exc}") from None
    if count != result.members or seen != result.sizes:
        raise ArchiveError(
            f"{result.path}: read back {count} members, {len(seen)} files; "
            f"wrote {result.members} members, {len(result.sizes)} files"
        )


# -- reading and safe extraction --------------------------------------------------------------


def member_top(name: str) -> str:
    return PurePosixPath(name).parts[0] if name else ""


# What a cold archive holds at its top: the server's dirs and its influxdb.conf.
COLD_TOPS = frozenset({"meta", "data", "wal", "hh", "influxdb.conf"})


# Tops of a cold archive that are one regular file (the others are directories).
FILE_TOPS = frozenset({"influxdb.conf"})
# The member types our writer (and influxd 0.9's backup) writes; AREGTYPE is the pre-POSIX
# spelling of REGTYPE, the same regular file. Anything else is refused, whatever tarfile
# would make of it (a contiguous file, a GNU sparse file, a volume header, an unknown type).
WRITTEN_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE})


def member_key(name: str) -> str:
    """A member's name as extraction uses it: './a', 'a/', 'a//b' and 'a/./b' are 'a', 'a/b'."""
    return "/".join(PurePosixPath(name).parts)


def check_member_safe(info: tarfile.TarInfo, allowed_tops: Set[str] | None) -> None:
    """Reject what could write outside the target: absolute paths, '..', links, devices, and
    any member type our backups never write (a GNU sparse file other than the PAX 1.0 files
    with holes our writer makes; the space check counts a sparse file's full size, so a few
    bytes of archive cannot stand for gigabytes more than the disk holds).

    One member alone; MemberCheck adds what only the listing shows. allowed_tops None: any
    first path component."""
    name = info.name
    parts = PurePosixPath(name).parts

    def unsafe(why: str) -> UnsafeArchive:
        return UnsafeArchive(f"unsafe member {name!r}: {why}")

    if name.startswith("/") or not parts:
        raise unsafe("absolute or empty path")
    if ".." in parts:
        raise unsafe("contains '..'")
    if allowed_tops is not None and parts[0] not in allowed_tops:
        raise unsafe(f"unexpected top-level entry (allowed: {', '.join(sorted(allowed_tops))})")
    if info.islnk():
        raise unsafe(f"a hard link to {info.linkname!r} (hard links are not allowed)")
    if info.issparse() and (why := sparse.sparse_refusal(info)) is not None:
        raise unsafe(why)
    if info.issym():
        target = PurePosixPath(info.linkname)
        if target.is_absolute() or ".." in target.parts:
            raise unsafe(f"symlink to {info.linkname!r} leaves the archive")
    elif info.ischr() or info.isblk() or info.isfifo():
        raise unsafe("device, fifo or other special file")
    elif info.type not in WRITTEN_TYPES:
        raise unsafe(
            f"tar member type {info.type!r}, which backups never hold (only regular files, "
            "directories and symlinks)"
        )
    if allowed_tops is not None:
        if parts[0] in FILE_TOPS and (len(parts) > 1 or not info.isreg()):
            raise unsafe(f"{parts[0]} must be one regular file")
        if parts[0] not in FILE_TOPS and len(parts) == 1 and not info.isdir():
            raise unsafe(f"{parts[0]} must be a directory")


def refused_link(root: Path, prefix: str) -> str | None:
    """Why restore would refuse a symlink below root archived under prefix (one to an absolute
    path or up the tree), naming the first; None when there is none. The cold job asks before
    it stops influxd: the check after writing would fail the run anyway, after the downtime."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            path = os.path.join(dirpath, name)
            try:
                if not os.path.islink(path):
                    continue
                info = tarfile.TarInfo(f"{prefix}/{os.path.relpath(path, root)}")
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            except OSError:
                continue  # gone meanwhile (compaction): the archive will not hold it either
            try:
                check_member_safe(info, None)
            except UnsafeArchive as exc:
                return f"{path}: {exc}"
    return None


class MemberCheck:
    """The one safety check of every tar we read (restore in each form, verify and its restore
    test, 0.9 snapshots): what verify passes, restore accepts. Call it on each member in order:
    check_member_safe, then what only the listing shows, which extraction would otherwise meet
    half-way ('File exists'): a name twice (after member_key), a member below one that is no
    directory, a member that is no directory where earlier ones need one. Counts the bytes the
    regular files unpack to (unpacked)."""

    def __init__(self, allowed_tops: Set[str] | None) -> None:
        self.allowed_tops = allowed_tops
        self.unpacked = 0
        self._kinds: dict[str, bool] = {}  # member key -> is a directory
        self._parents: set[str] = set()  # every dir above a member

    def __call__(self, info: tarfile.TarInfo) -> None:
        check_member_safe(info, self.allowed_tops)
        key = member_key(info.name)
        parts = key.split("/")

        def unsafe(why: str) -> UnsafeArchive:
            return UnsafeArchive(f"unsafe member {info.name!r}: {why}")

        if key in self._kinds:
            raise unsafe("a second member of that name (each name is written once)")
        if not info.isdir() and key in self._parents:
            raise unsafe("not a directory, but earlier members lie below it")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if self._kinds.get(above) is False:
                raise unsafe(f"below {above!r}, which is not a directory")
            self._parents.add(above)
        self._kinds[key] = info.isdir()
        if info.isreg():
            self.unpacked += sparse.stored_data(info)  # holes are written as holes


def check_headers(path: Path, allowed_tops: Set[str] | None) -> int:
    """Every member header of an uncompressed tar through MemberCheck, without reading the
    contents (tarfile seeks past them): UnsafeArchive for the first unsafe one; ArchiveError
    when the tar cannot be read. Returns the bytes its regular files unpack to."""
    check = MemberCheck(allowed_tops)
    try:
        with tarfile.open(path, "r:", tarinfo=CheckedTarInfo) as tar:
            for info in tar:
                check(info)
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable tar archive ({exc})") from None
    return check.unpacked


class NoSpace(ArchiveError):
    pass


def short_of_room(wanted: Iterable[tuple[Path, int]]) -> tuple[Path, int, int] | None:
    """Bytes to be written into each dir, summed per filesystem: (dir, bytes, free) of the
    first filesystem that lacks room, or None."""
    devices: dict[Path, int] = {}
    needed: dict[int, tuple[int, Path]] = {}
    for parent, size in wanted:
        if parent not in devices:
            devices[parent] = os.stat(parent).st_dev
        got, first = needed.get(devices[parent], (0, parent))
        needed[devices[parent]] = (got + size, first)
    for size, parent in needed.values():
        free = shutil.disk_usage(parent).free
        if free < size:
            return parent, size, free
    return None


def check_space(infos: list[tarfile.TarInfo], targets: dict[str, Path]) -> None:
    """NoSpace unless each filesystem the targets lie on has room for what the members going
    there unpack to (their data in the filesystem's blocks, never the archive's size: a few
    headers can stand for gigabytes; a sparse file's data, its holes are written as holes and
    CheckedTarInfo holds its map to what is stored). Targets need not exist yet; their parents
    must."""
    blocks: dict[Path, tuple[int, int]] = {}

    def taken(parent: Path, info: tarfile.TarInfo) -> tuple[Path, int]:
        if parent not in blocks:
            block = os.statvfs(parent).f_frsize or 4096
            # a dir takes a block where the parent dir does (ext4, xfs), none on tmpfs
            blocks[parent] = block, block if os.stat(parent).st_blocks else 0
        return parent, sparse.on_disk(info, *blocks[parent])

    short = short_of_room(
        taken(targets[PurePosixPath(info.name).parts[0]].parent, info) for info in infos
    )
    if short is not None:
        parent, size, free = short
        raise NoSpace(
            f"not enough space in {parent}: the archive unpacks to about {size} bytes there "
            f"(in the filesystem's {blocks[parent][0]}-byte blocks), {free} free; nothing written"
        )


@dataclass
class ArchiveScan:
    members: int
    files: int
    bytes: int
    tops: set[str]
    sha256: str
    unpacked: int  # bytes its regular files unpack to


def scan_archive(path: Path, allowed_tops: Set[str]) -> ArchiveScan:
    """Read the whole archive once: sha256, every header checked safe, every member's data present."""
    digest = hashlib.sha256()
    members = files = 0
    tops: set[str] = set()
    check = MemberCheck(allowed_tops)

    class _Hashing:
        def __init__(self, fh: BinaryIO) -> None:
            self.fh = fh

        def read(self, size: int = -1) -> bytes:
            data = self.fh.read(size)
            digest.update(data)
            return data

    size = path.stat().st_size
    try:
        with (
            open(path, "rb") as raw,
            tarfile.open(
                fileobj=_Hashing(raw),
                mode="r|",
                bufsize=CHUNK,  # type: ignore[call-overload]
                tarinfo=CheckedTarInfo,
            ) as tar,
        ):
            for info in tar:
                check(info)
                members += 1
                tops.add(member_top(info.name))
                if info.isreg():
                    files += 1
                    # what the archive stores of it (a sparse file: its runs, not its holes)
                    # follows its headers: read from the stream as it stands
                    stream = tar.fileobj
                    assert stream is not None
                    left = sparse.stored_data(info)
                    while left > 0:
                        chunk = stream.read(min(CHUNK, left))
                        if not chunk:
                            raise ArchiveError(f"member {info.name!r} is truncated")
                        left -= len(chunk)
            end = tar.offset
            # the end-of-archive padding too, so the digest covers the whole file
            while chunk := raw.read(CHUNK):
                digest.update(chunk)
            # tarfile stops quietly where a header is missing: a tar cut at a member boundary
            # reads as complete. Every tar writer ends with two zero blocks; verify insists on
            # them too (formats._scan), so a cut archive is refused by both.
            marker = os.pread(raw.fileno(), 2 * tarfile.BLOCKSIZE, end)
            if len(marker) < 2 * tarfile.BLOCKSIZE or marker.count(0) != len(marker):
                raise ArchiveError(
                    f"{path}: no end-of-archive marker at offset {end} after {members} members: "
                    "the archive is truncated or corrupt"
                )
    except tarfile.ReadError as exc:
        raise ArchiveError(f"{path}: not a readable tar archive ({exc})") from None
    except tarfile.TarError as exc:
        raise ArchiveError(f"{path}: damaged tar archive ({exc})") from None
    if members == 0:
        raise ArchiveError(f"{path}: archive holds no members")
    return ArchiveScan(members, files, size, tops, digest.hexdigest(), check.unpacked)


# The most a restored dir or file is given: influxd's own modes. Modes come from an archive or
# a manifest, which may be hostile: never set-id, never writable by group or other. And the
# least: what influxd, running as the owner, needs (a member of mode 0000 from a re-tarred
# archive, restored as such, left its points unserved).
MAX_DIR_MODE, MIN_DIR_MODE = 0o755, 0o700
MAX_FILE_MODE, MIN_FILE_MODE = 0o644, 0o600


def restored_mode(mode: int, *, is_dir: bool) -> int:
    """A mode read from an archive or manifest, capped and floored for a restored or fetched
    dir or file."""
    if is_dir:
        return stat.S_IMODE(mode) & MAX_DIR_MODE | MIN_DIR_MODE
    return stat.S_IMODE(mode) & MAX_FILE_MODE | MIN_FILE_MODE


def extract_safely(
    path: Path,
    targets: dict[str, Path],
    *,
    uid: int | None,
    gid: int | None,
    keep: Callable[[str], bool] | None = None,
    on_progress: Callable[[int, int, int, int], None] | None = None,
) -> int:
    """Extract members whose top-level name is in targets into those dirs (which must not exist).

    Every header is checked (MemberCheck) and the space the chosen members unpack to is there
    (check_space) before anything is written; keep, if given, picks
    the members written (by name; the dirs above a kept one are made as needed). on_progress
    gets (bytes written, bytes to write, files written, files to write) as the data goes out.
    Returns the number of regular files written.
    """
    allowed = set(targets)
    with tarfile.open(path, "r:", tarinfo=CheckedTarInfo) as tar:
        infos = tar.getmembers()
        check = MemberCheck(allowed | FILE_TOPS)
        for info in infos:
            check(info)

        def wanted(info: tarfile.TarInfo) -> bool:
            top = PurePosixPath(info.name).parts[0]
            return top in targets and (keep is None or keep(info.name))

        chosen = [info for info in infos if wanted(info)]
        check_space(chosen, targets)
        for target in targets.values():
            target.mkdir(parents=False)
            os.chmod(target, 0o755)  # influxd's dir, as influxd makes it: not our umask's 0700
            if uid is not None:
                os.chown(target, uid, gid if gid is not None else -1)
        files_total = sum(1 for info in chosen if info.isreg())
        bytes_total = sum(info.size for info in chosen if info.isreg())
        written = done = 0
        dirs: list[tuple[Path, tarfile.TarInfo]] = []
        for info in chosen:
            parts = PurePosixPath(info.name).parts
            top = parts[0]
            dest = targets[top].joinpath(*parts[1:]) if len(parts) > 1 else targets[top]
            if info.isdir():
                dest.mkdir(mode=0o755, parents=True, exist_ok=True)
                dirs.append((dest, info))
            elif info.issym():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(info.linkname, dest)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(info)
                assert src is not None
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    # a sparse member's runs at their offsets, its holes left holes
                    for offset, length in sparse.runs_of(info):
                        src.seek(offset)
                        out.seek(offset)
                        left = length
                        while left > 0:
                            chunk = src.read(min(CHUNK, left))
                            if not chunk:
                                raise ArchiveError(f"member {info.name!r} is truncated")
                            out.write(chunk)
                            left -= len(chunk)
                            done += len(chunk)
                            if on_progress is not None:
                                on_progress(done, bytes_total, written, files_total)
                    out.truncate(info.size)
                    done += info.size - sparse.stored_data(info)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(dest, restored_mode(info.mode, is_dir=False))
                os.utime(dest, (time.time(), info.mtime))
                written += 1
                if on_progress is not None:
                    on_progress(done, bytes_total, written, files_total)
            if uid is not None:
                os.chown(dest, uid, gid if gid is not None else -1, follow_symlinks=False)
        for dest, info in reversed(dirs):
            os.chmod(dest, restored_mode(info.mode, is_dir=True))
            os.utime(dest, (time.time(), info.mtime))
        for target in targets.values():
            fsync_dir(target)
    return written


def not_a_backup(path: Path) -> str | None:
    """Why path cannot be a backup at all (None: it may be one; its checks say if it is sound).

    Reads one tar header at most: a damaged archive is for the restore's and verify's checks.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return "neither a catalog id nor an existing archive path"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        if any(path.glob("*.manifest")):
            return None
        return "a directory without a *.manifest file, so not a 1.x hot backup"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        with tarfile.open(path, tarinfo=CheckedTarInfo) as tar:
            tar.next()
    except (tarfile.TarError, OSError):
        return "not a tar archive"
    return None
