"""WAL segment checks for InfluxDB 1.x (and 0.10+) `_NNNNN.wal` files.

A segment is a sequence of entries: type u8, length u32 big-endian, then `length` bytes
of snappy-compressed payload. On start-up influxd replays each segment and, at the first
entry it cannot read, truncates the segment there and carries on. That is harmless for a
torn last entry (a write cut short by a crash), but a bad entry with data after it means
influxd would silently drop every later entry: that is an error.

Two depths, as for TSM files (index always, block CRCs with deep):
- framing (always): entries chain from the first byte to the last, each of a known type, its
  snappy preamble a plausible length for its payload. Finds truncation, zero-filled or
  overwritten regions and bad length fields, at the cost of reading the 5-byte headers.
- deep: every payload decoded (snappy has no checksum: decoding is the only check a WAL entry
  has) and every write entry walked key by key, as influxd's replay does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import BinaryIO

from influx_backupd.store.formats.findings import Finding, read_at
from influx_backupd.store.formats.snappy import (
    SnappyError,
    block_length,
    decompress,
    preamble_problem,
)

WRITE, DELETE, DELETE_RANGE = 1, 2, 3
ENTRY_HEADER_SIZE = 5
_STRING = 4
# Bytes per value (8-byte timestamp + value) by value type: float, integer, boolean, unsigned;
# strings (type 4) carry their own u32 length. A tuple indexed by the type byte: cheaper than
# a dict lookup in the loop below, which runs once per series key.
_VALUE_SIZE: tuple[int | None, ...] = (None, 16, 16, 9, None, 16) + (None,) * 250
_ZERO_SCAN = 1 << 16
_SECTOR = 512
_KEY_HEADER = struct.Struct(">BH").unpack_from
_U32 = struct.Struct(">I").unpack_from

# (offset, n) -> up to n bytes at offset: read from a stream, or a slice of a buffer
_Reader = Callable[[int, int], "bytes | memoryview"]


def check_wal(stream: BinaryIO, size: int, member: str, *, deep: bool = False) -> list[Finding]:
    """A segment read from a seekable stream, one entry at a time."""
    return _check(lambda offset, n: read_at(stream, offset, n), size, member, deep)


def check_wal_buffer(data: bytes | bytearray, member: str, *, deep: bool = False) -> list[Finding]:
    """A segment already in memory: entries are checked in place, no copies."""
    view = memoryview(data)
    return _check(lambda offset, n: view[offset : offset + n], len(view), member, deep)


def entry_types(stream: BinaryIO, size: int) -> set[int]:
    """The types of the entries a segment holds, read from their 5-byte headers only (no
    payload decoded); stops at the first header that does not chain (a torn tail, or
    damage: the checks above report those)."""
    found: set[int] = set()
    pos = 0
    while pos + ENTRY_HEADER_SIZE <= size:
        header = read_at(stream, pos, ENTRY_HEADER_SIZE)
        if len(header) < ENTRY_HEADER_SIZE or header[0] not in (WRITE, DELETE, DELETE_RANGE):
            break
        found.add(header[0])
        pos += ENTRY_HEADER_SIZE + _U32(header, 1)[0]
    return found


def _check(read: _Reader, size: int, member: str, deep: bool) -> list[Finding]:
    pos = 0
    while pos < size:
        header = read(pos, ENTRY_HEADER_SIZE)
        if len(header) < ENTRY_HEADER_SIZE:
            if pos + len(header) < size:
                return [_short(member, size)]
            return [_torn(member, pos, f"{size - pos}-byte entry header")]
        entry_type, length = header[0], _U32(header, 1)[0]
        end = pos + ENTRY_HEADER_SIZE + length
        if end > size:
            return [_past_end(read, size, member, pos, entry_type, length)]
        problem = _entry_problem(read, pos, entry_type, length, deep)
        if problem == "short":
            return [_short(member, size)]
        if problem is not None:
            if _all_zero(read, pos, size) or (end == size and _zero_tail(read, pos, end)):
                # What a crash leaves: the file grown, its last pages never written (zeros).
                # Nothing valid follows; influxd truncates it away.
                return [_torn(member, pos, problem)]
            # Garbage, not zeros: damage. Even as the last entry (a crash cannot write bytes
            # that were never sent); influxd would drop it and whatever follows.
            lost = f"the {size - end} bytes that follow" if end < size else f"its {length} bytes"
            return [
                Finding(
                    "error",
                    member,
                    f"corrupt entry at offset {pos}: {problem}; influxd would drop {lost}",
                )
            ]
        pos = end
    return []


def _past_end(
    read: _Reader, size: int, member: str, pos: int, entry_type: int, length: int
) -> Finding:
    """An entry whose declared length runs past the end: a torn write, or a bad length?

    A torn write leaves a clean prefix of a valid entry. A corrupt length field instead
    swallows the entries after it; influxd would drop them all, so that is an error.
    """
    if _all_zero(read, pos, size):
        return _torn(member, pos, "zero-filled tail")
    rest = size - pos - ENTRY_HEADER_SIZE
    detail = f"entry declares {length} bytes, {rest} remain"
    if entry_type not in (WRITE, DELETE, DELETE_RANGE):
        problem = f"unknown entry type {entry_type}"
    else:
        try:
            used = block_length(bytes(read(pos + ENTRY_HEADER_SIZE, rest)))
        except SnappyError as exc:
            problem = f"payload is not snappy ({exc})"
        else:
            if used is None:
                return _torn(member, pos, detail)
            after = pos + ENTRY_HEADER_SIZE + used
            if after == size:
                return _torn(member, pos, f"{detail}, yet its payload is whole")
            if _all_zero(read, after, size):
                return _torn(member, pos, f"{detail}, zero-filled after the payload")
            problem = f"length field says {length} but the payload ends after {used} bytes"
    return Finding(
        "error",
        member,
        f"corrupt entry at offset {pos}: {problem}; {detail}: influxd would drop them",
    )


def _torn(member: str, pos: int, detail: str) -> Finding:
    return Finding(
        "warning", member, f"torn tail at offset {pos} (influxd tolerates this): {detail}"
    )


def _short(member: str, size: int) -> Finding:
    return Finding("error", member, f"data ends before its declared size of {size} bytes")


def _zero_tail(read: _Reader, start: int, end: int) -> bool:
    """The entry between start and end ends in at least a disk sector of zeros: the file was
    grown, its last pages never written (a valid snappy block that ends in zeros decodes, so
    this is only asked of one that does not)."""
    return end - start >= _SECTOR and _all_zero(read, end - _SECTOR, end)


def _all_zero(read: _Reader, start: int, end: int) -> bool:
    pos = start
    while pos < end:
        chunk = bytes(read(pos, min(_ZERO_SCAN, end - pos)))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        pos += len(chunk)
    return True


def _entry_problem(read: _Reader, pos: int, entry_type: int, length: int, deep: bool) -> str | None:
    """Why the entry at pos is unreadable, "short" if the data ended, or None if fine."""
    if entry_type not in (WRITE, DELETE, DELETE_RANGE):
        return f"unknown entry type {entry_type}"
    if not deep:
        # the preamble and the last byte only (is it there?), not the payload between
        if length and not read(pos + ENTRY_HEADER_SIZE + length - 1, 1):
            return "short"
        problem = preamble_problem(read(pos + ENTRY_HEADER_SIZE, min(length, 5)), length)
        return None if problem is None else f"undecodable snappy payload ({problem})"
    payload = read(pos + ENTRY_HEADER_SIZE, length)
    if len(payload) < length:
        return "short"
    try:
        data = decompress(payload)
    except SnappyError as exc:
        return f"undecodable snappy payload ({exc})"
    if entry_type == WRITE:
        return _write_problem(data)
    if entry_type == DELETE_RANGE:
        return _delete_range_problem(data)
    return None  # a delete entry is newline-separated keys: any bytes parse


def _write_problem(b: bytes | memoryview) -> str | None:
    """Walk a write entry: per key, value type u8, key len u16, key, count u32, values."""
    # struct reads in place: slicing a view and int.from_bytes cost 1.7x as much here
    i, n = 0, len(b)
    key_header, u32, value_size = _KEY_HEADER, _U32, _VALUE_SIZE
    while i < n:
        if i + 3 > n:
            return "write entry cut short in a key header"
        value_type, key_length = key_header(b, i)
        i += 3 + key_length
        if i + 4 > n:
            return "write entry cut short in a key"
        count = u32(b, i)[0]
        i += 4
        size = value_size[value_type]
        if size is not None:
            i += count * size
        elif value_type == _STRING:
            for _ in range(count):
                if i + 12 > n:
                    return "write entry cut short in a string value"
                i += 12 + u32(b, i + 8)[0]
        else:
            return f"write entry has unknown value type {value_type}"
        if i > n:
            return "write entry cut short in its values"
    return None


def _delete_range_problem(b: bytes | memoryview) -> str | None:
    """min i64, max i64, then u32-length-prefixed series keys."""
    if len(b) < 16:
        return "delete-range entry shorter than its time range"
    i = 16
    while i < len(b):
        if i + 4 > len(b):
            return "delete-range entry cut short in a key length"
        i += 4 + _U32(b, i)[0]
    if i > len(b):
        return "delete-range entry cut short in a key"
    return None
