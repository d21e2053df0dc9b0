"""TSM (InfluxDB 1.x tsm1) file checks: header, footer, index and, optionally, block CRCs.

Layout, all big-endian: header = magic u32 0x16D116D1 + version u8 (1); then blocks, each
a CRC32 (IEEE) u32 of the rest of the block followed by the block data (whose first byte
is the block type); then the index; then the index offset u64 as the last 8 bytes.
Index entries, sorted by key: key length u16, key, block type u8, count u16, then count ×
(min time i64, max time i64, block offset i64, block size u32).

Files run to 2 GB, so everything is read in bounded chunks.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from influx_backupd.store.formats.findings import Finding, read_at

MAGIC = 0x16D116D1
VERSION = 1
HEADER_SIZE = 5
FOOTER_SIZE = 8
# Block types 0..4: float, integer, boolean, string, unsigned.
BLOCK_TYPES = range(5)
INDEX_BLOCK = struct.Struct(">qqqI")
_CHUNK = 1 << 16
_BLOCK_READ = 1 << 20
# One corrupt index tends to produce a finding per block; name a few, count the rest.
_MAX_BLOCK_FINDINGS = 10


class _Short(Exception):
    """The stream ended before its declared size."""


class _IndexReader:
    """Sequential reads over [start, end) of a stream through a bounded buffer.

    It seeks before every refill, so block reads in between (deep mode) do no harm.
    """

    def __init__(self, stream: BinaryIO, start: int, end: int) -> None:
        self._stream = stream
        self.pos = start
        self.end = end
        self._buf = b""
        self._buf_start = start

    def take(self, n: int) -> bytes | None:
        """The next n bytes, or None when fewer than n remain before end."""
        if self.pos + n > self.end:
            return None
        off = self.pos - self._buf_start
        if off + n > len(self._buf):
            want = min(max(n, _CHUNK), self.end - self.pos)
            self._buf = read_at(self._stream, self.pos, want)
            self._buf_start = self.pos
            off = 0
            if len(self._buf) < n:
                raise _Short
        self.pos += n
        return self._buf[off : off + n]


@dataclass(frozen=True)
class IndexEntry:
    """One well-formed index entry: its key (series key + field), its block type and its
    blocks' raw (min time, max time, offset, size) records, INDEX_BLOCK.iter_unpack-able."""

    key: bytes
    block_type: int
    blocks: bytes


class BadIndex(ValueError):
    """An index entry that is cut short or corrupt; the walk cannot go on past it. key: the
    entry's key when it could be read."""

    def __init__(self, message: str, key: bytes | None = None) -> None:
        super().__init__(message)
        self.key = key


def _shown(key: bytes) -> str:
    """A key as a message names it: its first 80 bytes."""
    return key[:80].decode("utf-8", "replace")


def index_entries(stream: BinaryIO, start: int, end: int) -> Iterator[IndexEntry]:
    """The entries of a TSM index that spans [start, end) of stream, in file order, read in
    bounded chunks; the one walk of the index layout (verify's check_tsm and the SQL chain
    merge's field types both use it). Raises BadIndex at the first entry it cannot read."""
    index = _IndexReader(stream, start, end)
    while index.pos < end:
        entry_at = index.pos
        head = index.take(2)
        key = index.take(int.from_bytes(head, "big")) if head is not None else None
        tail = index.take(3) if key is not None else None
        if head is None or key is None or tail is None:
            raise BadIndex(f"index entry at {entry_at} is cut short")
        block_type, count = tail[0], int.from_bytes(tail[1:], "big")
        if not key or block_type not in BLOCK_TYPES or count == 0:
            raise BadIndex(
                f"index entry at {entry_at} is corrupt (key length {len(key)}, "
                f"type {block_type}, {count} blocks)"
            )
        blocks = index.take(count * INDEX_BLOCK.size)
        if blocks is None:
            raise BadIndex(f"index entry for {_shown(key)!r} is cut short", key)
        yield IndexEntry(key, block_type, blocks)


def check_tsm(stream: BinaryIO, size: int, member: str, *, deep: bool = False) -> list[Finding]:
    try:
        return _check(stream, size, member, deep)
    except _Short:
        return [Finding("error", member, f"data ends before its declared size of {size} bytes")]


def _check(stream: BinaryIO, size: int, member: str, deep: bool) -> list[Finding]:
    def error(message: str) -> list[Finding]:
        return [Finding("error", member, message)]

    if size < HEADER_SIZE + FOOTER_SIZE:
        return error(f"{size} bytes is too small for a TSM file")
    header = read_at(stream, 0, HEADER_SIZE)
    footer = read_at(stream, size - FOOTER_SIZE, FOOTER_SIZE)
    if len(header) < HEADER_SIZE or len(footer) < FOOTER_SIZE:
        raise _Short
    magic = int.from_bytes(header[:4], "big")
    if magic != MAGIC:
        return error(f"bad magic {magic:#010x}, expected {MAGIC:#010x}")
    if header[4] != VERSION:
        return error(f"unsupported version {header[4]}")
    index_offset = int.from_bytes(footer, "big")
    index_end = size - FOOTER_SIZE
    if not HEADER_SIZE <= index_offset < index_end:
        return error(
            f"index offset {index_offset} outside [{HEADER_SIZE}, {index_end}): "
            "truncated or corrupt footer"
        )

    findings: list[Finding] = []
    block_problems = 0

    def block_problem(message: str) -> None:
        nonlocal block_problems
        block_problems += 1
        if block_problems <= _MAX_BLOCK_FINDINGS:
            findings.append(Finding("error", member, message))

    previous_key: bytes | None = None

    def note_order(key: bytes) -> None:
        if previous_key is not None and key <= previous_key:
            # Readers binary-search the index; out of order means keys become unreadable.
            findings.append(Finding("error", member, f"index key {_shown(key)!r} out of order"))

    try:
        for entry in index_entries(stream, index_offset, index_end):
            note_order(entry.key)
            previous_key = entry.key
            shown = _shown(entry.key)
            for min_time, max_time, offset, block_size in INDEX_BLOCK.iter_unpack(entry.blocks):
                if min_time > max_time:
                    block_problem(f"block of {shown!r} at {offset}: min time after max time")
                if offset < HEADER_SIZE or block_size < 5 or offset + block_size > index_offset:
                    block_problem(
                        f"block of {shown!r} at {offset} (+{block_size} bytes) lies outside the "
                        f"data section [{HEADER_SIZE}, {index_offset})"
                    )
                elif deep and (
                    problem := _check_block(stream, offset, block_size, entry.block_type)
                ):
                    block_problem(f"block of {shown!r} at {offset}: {problem}")
    except BadIndex as bad:
        if bad.key is not None:
            note_order(bad.key)
        findings.append(Finding("error", member, str(bad)))
    if block_problems > _MAX_BLOCK_FINDINGS:
        findings.append(
            Finding(
                "error",
                member,
                f"… and {block_problems - _MAX_BLOCK_FINDINGS} more bad blocks",
            )
        )
    return findings


def _check_block(stream: BinaryIO, offset: int, block_size: int, block_type: int) -> str | None:
    stored = read_at(stream, offset, 4)
    if len(stored) < 4:
        raise _Short
    crc = 0
    first = b""
    pos, end = offset + 4, offset + block_size
    while pos < end:
        chunk = read_at(stream, pos, min(_BLOCK_READ, end - pos))
        if not chunk:
            raise _Short
        if not first:
            first = chunk[:1]
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    expected = int.from_bytes(stored, "big")
    if crc != expected:
        return f"CRC32 mismatch (stored {expected:#010x}, computed {crc:#010x})"
    if first[0] != block_type:
        return f"block type {first[0]} disagrees with the index's type {block_type}"
    return None
