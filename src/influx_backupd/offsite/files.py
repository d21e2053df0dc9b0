"""The files of one backup as the bucket sees them: a cold tar's members or a hot dir's files.

A tar is scanned in place (no extraction): its headers first (tarfile seeks past the data),
then one sequential read that hashes the whole archive and each member. What lies between two
members' data (padding, the next header blocks) is kept verbatim as that member's `lead`, and
what follows the last member's data as the `trailer`: lead + data of every member, then the
trailer, give back the archive byte for byte, whatever wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal

from influx_backupd.offsite.errors import Damaged, OffsiteError
from influx_backupd.store.formats.tarinfo import CheckedTarInfo
from influx_backupd.store.sparse import sparse_refusal, stored_data

CHUNK = 1 << 20
Layout = Literal["tar", "dir"]
EntryType = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class FileEntry:
    path: str  # tar member name, or the path relative to the backup dir
    size: int
    mode: int  # permission bits
    mtime: float
    sha256: str  # of the file's bytes; "" for dirs and symlinks
    type: EntryType = "file"
    link: str = ""  # symlink target
    offset: int = 0  # tar: where the member's data starts in the archive
    lead: bytes = b""  # tar: the bytes between the previous member's data and this one's


@dataclass
class Source:
    """One local backup to send: where its bytes are and what they are."""

    layout: Layout
    path: Path  # the archive file, or the backup dir
    entries: list[FileEntry]
    sha256: str  # of the archive file, or hot.py's listing digest of the dir
    size: int  # of the archive file, or the sum of the files' sizes
    trailer: bytes = b""
    rebuild: Literal["bytes", "tree"] = "bytes"  # can the archive be rebuilt byte for byte
    notes: list[str] = field(default_factory=list)
    # what is left to hash (lazy scans): fills entries' sha256 in order, yields their indexes
    _hashing: Callable[[threading.Event | None], Iterator[int]] | None = None

    def files(self) -> Iterator[FileEntry]:
        return (e for e in self.entries if e.type == "file")

    def hashing(self, cancel: threading.Event | None = None) -> Iterator[FileEntry]:
        """The files in order, each with its sha256: hashed now if it was not yet (once)."""
        if self._hashing is None:
            yield from self.files()
            return
        run, self._hashing = self._hashing, None
        for i in run(cancel):
            yield self.entries[i]

    def hash_all(self) -> None:
        for _ in self.hashing():
            pass

    def open(self, entry: FileEntry, offset: int = 0, size: int | None = None) -> Window:
        """A reader of exactly entry.size bytes of the entry's data (or of size bytes of it,
        from offset)."""
        size = entry.size - offset if size is None else size
        if self.layout == "tar":
            return Window(self.path, entry.offset + offset, size)
        return Window(self.path / entry.path, offset, size)


class Window:
    """Reads [offset, offset + size) of a file with pread; seekable so boto3 can rewind on retry."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._start, self._size, self._pos = offset, size, 0

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        if n < 0 or n > left:
            n = left
        data = os.pread(self._fd, n, self._start + self._pos) if n else b""
        self._pos += len(data)
        return data

    def readinto(self, buf: memoryview | bytearray) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _entry_type(info: tarfile.TarInfo) -> EntryType | None:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    return None


Known = Mapping[tuple[str, int, float], str]  # (path, size, mtime) → sha256


def scan_tar(
    path: Path,
    expected_sha256: str | None = None,
    known: Known | None = None,
    *,
    lazy: bool = False,
    recheck: bool = True,
) -> Source:
    """Hash a tar archive and each member in one read; refuse one that is not its record.

    known: the sha256 of files an earlier backup of the job held (its manifest). A member with
    the same path, size and mtime is not read again (a TSM file never changes once written):
    a large server's nightly scan reads what is new, not every byte. The whole archive's
    sha256 is then not recomputed (the run checked it when it wrote the archive; a fetch
    checks the rebuilt archive against it).

    lazy: read only the headers now; the members are hashed by source.hashing() as the sender
    asks for them (it hashes the next files while the last ones are uploaded), and a damaged
    archive raises Damaged there, before its manifest is written.

    recheck=False (with expected_sha256): the whole archive's sha256 is not taken again, only
    each member's (their object names); for an archive whose sha256 was proved a short while
    ago (the run that wrote it, a verify)."""
    try:
        with tarfile.open(path, "r:", tarinfo=CheckedTarInfo) as tar:
            infos = tar.getmembers()
    except (tarfile.TarError, OSError) as exc:
        raise OffsiteError(f"{path}: not a readable tar archive ({exc})") from None
    notes: list[str] = []
    entries: list[FileEntry] = []
    pos = 0
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        # hard links, devices, other sparse forms: our writer makes none; rebuild the tree
        odd = {
            id(i) for i in infos if _entry_type(i) is None or (i.issparse() and sparse_refusal(i))
        }
        rebuild: Literal["bytes", "tree"] = "tree" if odd else "bytes"
        for info in infos:
            kind = _entry_type(info)
            if kind is None or id(info) in odd:
                notes.append(f"member {info.name!r} is neither a file, a dir nor a symlink")
                continue
            if info.issparse() and rebuild == "tree":
                # a tree gets whole files; the stored runs of a file with holes are not one
                notes.append(f"member {info.name!r} has holes and is not sent as a file")
                continue
            # A file with holes (our writer's PAX 1.0 sparse member): its map goes with the
            # headers into the lead, its object holds the data runs as stored.
            stored = stored_data(info) if kind == "file" else 0
            lead = _read(fh, pos, info.offset_data - pos) if kind == "file" else b""
            if kind == "file":
                pos = info.offset_data + stored
            entries.append(
                FileEntry(
                    path=info.name,
                    size=stored,
                    mode=info.mode,
                    mtime=float(info.mtime),
                    sha256=(known or {}).get((info.name, stored, float(info.mtime)), "")
                    if kind == "file"
                    else "",
                    type=kind,
                    link=info.linkname if kind == "symlink" else "",
                    offset=info.offset_data if kind == "file" else 0,
                    lead=lead,
                )
            )
        trailer = _read(fh, pos, size - pos)
    leads = [e.lead for e in entries]
    if rebuild == "tree":
        trailer_kept = b""
        entries = [replace_lead(e) for e in entries]
    else:
        trailer_kept = trailer
    source = Source("tar", path, entries, expected_sha256 or "", size, trailer_kept, rebuild, notes)
    if not recheck and expected_sha256 is None:
        raise OffsiteError(f"{path}: recheck=False needs the archive's sha256")
    source._hashing = partial(_hash_tar, source, leads, trailer, expected_sha256, recheck)
    if not lazy:
        source.hash_all()
    return source


def _hash_tar(
    source: Source,
    leads: list[bytes],
    trailer: bytes,
    expected: str | None,
    recheck: bool = True,
    cancel: threading.Event | None = None,
) -> Iterator[int]:
    """Hash each member not known yet (and the whole archive, when none is and recheck):
    fills the entries' sha256 in order, yielding each file's index as it is done."""
    whole = hashlib.sha256()
    update = whole.update if recheck else _ignore
    skipped = 0
    fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for i, entry in enumerate(source.entries):
            if entry.type != "file":
                continue
            update(leads[i])
            if entry.sha256:  # known from an earlier backup: not read again
                skipped += entry.size
                yield i
                continue
            member = hashlib.sha256()
            left, at = entry.size, entry.offset
            while left > 0:
                if cancel is not None and cancel.is_set():
                    return
                chunk = os.pread(fd, min(CHUNK, left), at)
                if not chunk:
                    raise Damaged(f"{source.path}: member {entry.path!r} is truncated")
                member.update(chunk)
                update(chunk)
                left -= len(chunk)
                at += len(chunk)
            source.entries[i] = dataclasses.replace(entry, sha256=member.hexdigest())
            yield i
    finally:
        os.close(fd)
    whole.update(trailer)
    sha256 = whole.hexdigest()
    if not recheck:
        assert expected is not None
        sha256 = expected
    elif skipped:
        if expected is None:
            raise OffsiteError(f"{source.path}: known files given, but no sha256 for the archive")
        sha256 = expected
        source.notes.append(
            f"{skipped} bytes of files known from an earlier backup were not read again"
        )
    elif expected is not None and sha256 != expected:
        raise Damaged(
            f"{source.path}: sha256 {sha256[:16]}… is not the {expected[:16]}… of its record: "
            "the local archive is damaged, not sent"
        )
    source.sha256 = sha256


def _ignore(_: bytes) -> None:
    pass


def replace_lead(entry: FileEntry) -> FileEntry:
    return FileEntry(
        entry.path, entry.size, entry.mode, entry.mtime, entry.sha256, entry.type, entry.link
    )


def _read(fh: BinaryIO, at: int, n: int) -> bytes:
    """n bytes at `at` (headers, padding): small, so kept in memory."""
    if n < 0:
        raise OffsiteError(f"{fh.name!r}: tar members overlap at byte {at}")
    data = os.pread(fh.fileno(), n, at) if n else b""
    if len(data) != n:
        raise Damaged(f"{fh.name!r}: truncated at byte {at}")
    return data


def listing_sha256(entries: list[FileEntry]) -> str:
    """The digest hot.py records for a 1.x backup dir: "NAME\\0SIZE\\0SHA256\\n" sorted by name."""
    listing = hashlib.sha256()
    for e in sorted((e for e in entries if e.type == "file"), key=lambda e: e.path):
        listing.update(f"{e.path}\0{e.size}\0{e.sha256}\n".encode())
    return listing.hexdigest()


def scan_dir(path: Path, expected_sha256: str | None = None, *, lazy: bool = False) -> Source:
    """Hash every regular file below a backup dir (a 1.x hot backup is one flat dir).

    lazy: list the files now; source.hashing() hashes them as the sender asks (see scan_tar),
    and checks the listing digest after the last one (Damaged there, before the manifest)."""
    if not path.is_dir():
        raise OffsiteError(f"{path}: not a directory")
    entries: list[FileEntry] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(path).as_posix()
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                raise OffsiteError(f"{full}: not a regular file")
            entries.append(FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime, ""))
            total += st.st_size
    source = Source("dir", path, entries, expected_sha256 or "", total, rebuild="tree")
    source._hashing = partial(_hash_dir, source, expected_sha256)
    if not lazy:
        source.hash_all()
    return source


def _hash_dir(
    source: Source, expected: str | None, cancel: threading.Event | None = None
) -> Iterator[int]:
    for i, entry in enumerate(source.entries):
        digest, n = hashlib.sha256(), 0
        with open(source.path / entry.path, "rb", buffering=0) as fh:
            while chunk := fh.read(CHUNK):
                if cancel is not None and cancel.is_set():
                    return
                digest.update(chunk)
                n += len(chunk)
        if n != entry.size:
            raise Damaged(f"{source.path / entry.path}: changed while it was read")
        source.entries[i] = dataclasses.replace(entry, sha256=digest.hexdigest())
        yield i
    sha256 = listing_sha256(source.entries)
    if expected is not None and sha256 != expected:
        raise Damaged(
            f"{source.path}: files digest {sha256[:16]}… is not the {expected[:16]}… of its "
            "record: the local backup is damaged, not sent"
        )
    source.sha256 = sha256
