"""Uncompressed tar archives: a streaming writer that hashes in the same pass, checks, safe extraction."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough to keep RSS flat


class ArchiveError(Exception):
    pass


class UnsafeArchive(ArchiveError):
    pass


class _HashingSink:
    """A write-only file object that hashes and counts what passes through to an fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        total = len(view)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.bytes += total
        return total


@dataclass
class WriteResult:
    path: Path
    bytes: int
    files: int  # regular files
    members: int  # every tar member, directories included
    sha256: str
    sizes: dict[str, int] = field(default_factory=dict)  # member name → size of regular files


def _walk(root: Path, prefix: str) -> Iterator[tuple[Path, str]]:
    """(path, member name) for root and everything under it, sorted so archives are stable."""
    yield root, prefix
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        base = prefix if rel == "." else f"{prefix}/{rel}"
        for name in dirnames:
            # os.walk does not descend into symlinked dirs; we archive the link itself.
            yield Path(dirpath, name), f"{base}/{name}"
        for name in sorted(filenames):
            yield Path(dirpath, name), f"{base}/{name}"


ProgressFn = Callable[[int], None]


def write_archive(
    dest: Path,
    sources: list[tuple[str, Path]],
    *,
    progress: ProgressFn | None = None,
) -> WriteResult:
    """Write an uncompressed pax tar of sources (member prefix, path) to dest.

    Written as dest.partial (mode 0600), fsynced, renamed, then the directory fsynced:
    a crash never leaves a file under the final name that is not complete.
    """
    partial = dest.with_name(dest.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    sink = _HashingSink(fd)
    files = members = 0
    sizes: dict[str, int] = {}
    try:
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:  # type: ignore[call-overload]
            for prefix, root in sources:
                entries = _walk(root, prefix) if root.is_dir() else iter([(root, prefix)])
                for path, name in entries:
                    info = tar.gettarinfo(str(path), arcname=name)
                    members += 1
                    if info.isreg():
                        with open(path, "rb") as fh:
                            tar.addfile(info, _Reader(fh, progress))
                        files += 1
                        sizes[name] = info.size
                    elif info.isdir() or info.issym():
                        tar.addfile(info)
                    # sockets, fifos and devices have no place in influxd's dirs: skipped
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(partial, dest)
    fsync_dir(dest.parent)
    return WriteResult(dest, sink.bytes, files, members, sink.sha256.hexdigest(), sizes)


class _Reader:
    """Passes reads through and reports bytes read, for progress events."""

    def __init__(self, fh: BinaryIO, progress: ProgressFn | None) -> None:
        self.fh = fh
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        if self.progress is not None and data:
            self.progress(len(data))
        return data


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_written(result: WriteResult) -> None:
    """The archive on disk is what we wrote: its size, and every member header with its size.

    Reads tar headers only (uncompressed tar lets tarfile seek past contents), so this is cheap.
    """
    on_disk = result.path.stat().st_size
    if on_disk != result.bytes:
        raise ArchiveError(f"{result.path}: {on_disk} bytes on disk, {result.bytes} written")
    seen: dict[str, int] = {}
    count = 0
    try:
        with tarfile.open(result.path, "r:") as tar:
            for info in tar:
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


def check_member_safe(info: tarfile.TarInfo, allowed_tops: set[str]) -> None:
    """Reject what could write outside the target: absolute paths, '..', outbound links, devices."""
    name = info.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or not parts:
        raise UnsafeArchive(f"member {name!r}: absolute or empty path")
    if ".." in parts:
        raise UnsafeArchive(f"member {name!r}: contains '..'")
    if parts[0] not in allowed_tops:
        raise UnsafeArchive(
            f"member {name!r}: unexpected top-level entry (allowed: {', '.join(sorted(allowed_tops))})"
        )
    if info.islnk():
        raise UnsafeArchive(f"member {name!r}: hard links are not allowed")
    if info.issym():
        target = PurePosixPath(info.linkname)
        if target.is_absolute() or ".." in target.parts:
            raise UnsafeArchive(f"member {name!r}: symlink to {info.linkname!r} leaves the archive")
    elif not (info.isreg() or info.isdir()):
        raise UnsafeArchive(f"member {name!r}: device, fifo or other special file")


@dataclass
class ArchiveScan:
    members: int
    files: int
    bytes: int
    tops: set[str]
    sha256: str


def scan_archive(path: Path, allowed_tops: set[str]) -> ArchiveScan:
    """Read the whole archive once: sha256, every header checked safe, every member's data present."""
    digest = hashlib.sha256()
    members = files = 0
    tops: set[str] = set()

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
            ) as tar,
        ):
            for info in tar:
                check_member_safe(info, allowed_tops)
                members += 1
                tops.add(member_top(info.name))
                if info.isreg():
                    files += 1
                    stream = tar.extractfile(info)
                    assert stream is not None
                    left = info.size
                    while left > 0:
                        chunk = stream.read(min(CHUNK, left))
                        if not chunk:
                            raise ArchiveError(f"member {info.name!r} is truncated")
                        left -= len(chunk)
            # the end-of-archive padding too, so the digest covers the whole file
            while chunk := raw.read(CHUNK):
                digest.update(chunk)
    except tarfile.ReadError as exc:
        raise ArchiveError(f"{path}: not a readable tar archive ({exc})") from None
    except tarfile.TarError as exc:
        raise ArchiveError(f"{path}: damaged tar archive ({exc})") from None
    if members == 0:
        raise ArchiveError(f"{path}: archive holds no members")
    return ArchiveScan(members, files, size, tops, digest.hexdigest())


def extract_safely(
    path: Path,
    targets: dict[str, Path],
    *,
    uid: int | None,
    gid: int | None,
) -> int:
    """Extract members whose top-level name is in targets into those dirs (which must not exist).

    Every header is checked before anything is written below a target.
    Returns the number of regular files written.
    """
    allowed = set(targets)
    with tarfile.open(path, "r:") as tar:
        infos = tar.getmembers()
        for info in infos:
            check_member_safe(info, allowed | {"influxdb.conf"})
        for target in targets.values():
            target.mkdir(mode=0o755, parents=False)
            if uid is not None:
                os.chown(target, uid, gid if gid is not None else -1)
        written = 0
        dirs: list[tuple[Path, tarfile.TarInfo]] = []
        for info in infos:
            parts = PurePosixPath(info.name).parts
            top = parts[0]
            if top not in targets:
                continue
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
                    left = info.size
                    while left > 0:
                        chunk = src.read(min(CHUNK, left))
                        if not chunk:
                            raise ArchiveError(f"member {info.name!r} is truncated")
                        out.write(chunk)
                        left -= len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(dest, stat.S_IMODE(info.mode) & 0o777)
                os.utime(dest, (time.time(), info.mtime))
                written += 1
            if uid is not None:
                os.chown(dest, uid, gid if gid is not None else -1, follow_symlinks=False)
        for dest, info in reversed(dirs):
            os.chmod(dest, stat.S_IMODE(info.mode) & 0o777)
            os.utime(dest, (time.time(), info.mtime))
        for target in targets.values():
            fsync_dir(target)
    return written
