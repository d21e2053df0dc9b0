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

    index = _IndexReader(stream, index_offset, index_end)
    previous_key: bytes | None = None
    while index.pos < index_end:
        entry_at = index.pos
        head = index.take(2)
        key = index.take(int.from_bytes(head, "big")) if head is not None else None
        tail = index.take(3) if key is not None else None
        if head is None or key is None or tail is None:
            findings.append(Finding("error", member, f"index entry at {entry_at} is cut short"))
            break
        block_type, count = tail[0], int.from_bytes(tail[1:], "big")
        shown = key[:80].decode("utf-8", "replace")
        if not key or block_type not in BLOCK_TYPES or count == 0:
            findings.append(
                Finding(
                    "error",
                    member,
                    f"index entry at {entry_at} is corrupt (key length {len(key)}, "
                    f"type {block_type}, {count} blocks)",
                )
            )
            break
        if previous_key is not None and key <= previous_key:
            # Readers binary-search the index; out of order means keys become unreadable.
            findings.append(Finding("error", member, f"index key {shown!r} out of order"))
        previous_key = key
        raw = index.take(count * INDEX_BLOCK.size)
        if raw is None:
            findings.append(Finding("error", member, f"index entry for {shown!r} is cut short"))
            break
        for min_time, max_time, offset, block_size in INDEX_BLOCK.iter_unpack(raw):
            if min_time > max_time:
                block_problem(f"block of {shown!r} at {offset}: min time after max time")
            if offset < HEADER_SIZE or block_size < 5 or offset + block_size > index_offset:
                block_problem(
                    f"block of {shown!r} at {offset} (+{block_size} bytes) lies outside the "
                    f"data section [{HEADER_SIZE}, {index_offset})"
                )
            elif deep and (problem := _check_block(stream, offset, block_size, block_type)):
                block_problem(f"block of {shown!r} at {offset}: {problem}")
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
