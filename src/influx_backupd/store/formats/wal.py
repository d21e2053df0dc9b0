"""WAL segment checks for InfluxDB 1.x (and 0.10+) `_NNNNN.wal` files.

A segment is a sequence of entries: type u8, length u32 big-endian, then `length` bytes
of snappy-compressed payload. On start-up influxd replays each segment and, at the first
entry it cannot read, truncates the segment there and carries on. That is harmless for a
torn last entry (a write cut short by a crash), but a bad entry with data after it means
influxd would silently drop every later entry: that is an error.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from influx_backupd.store.formats.findings import Finding, read_at
from influx_backupd.store.formats.snappy import SnappyError, block_length, decompress

WRITE, DELETE, DELETE_RANGE = 1, 2, 3
ENTRY_HEADER_SIZE = 5
# Bytes per value after the 8-byte timestamp, by value type (float, integer, boolean,
# unsigned); strings (type 4) carry their own u32 length.
_FIXED_VALUE_SIZE = {1: 8, 2: 8, 3: 1, 5: 8}
_STRING = 4
_ZERO_SCAN = 1 << 16
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from


def check_wal(stream: BinaryIO, size: int, member: str) -> list[Finding]:
    pos = 0
    while pos < size:
        header = read_at(stream, pos, ENTRY_HEADER_SIZE)
        if len(header) < ENTRY_HEADER_SIZE:
            if pos + len(header) < size:
                return [_short(member, size)]
            return [_torn(member, pos, f"{size - pos}-byte entry header")]
        entry_type, length = header[0], int.from_bytes(header[1:], "big")
        end = pos + ENTRY_HEADER_SIZE + length
        if end > size:
            return [_past_end(stream, size, member, pos, entry_type, length)]
        problem = _entry_problem(stream, pos, entry_type, length)
        if problem == "short":
            return [_short(member, size)]
        if problem is not None:
            if end == size or _all_zero(stream, pos, size):
                # Nothing valid follows: the crash-torn write influxd truncates away.
                return [_torn(member, pos, problem)]
            return [
                Finding(
                    "error",
                    member,
                    f"corrupt entry at offset {pos}: {problem}; influxd would drop the "
                    f"{size - end} bytes that follow",
                )
            ]
        pos = end
    return []


def _past_end(
    stream: BinaryIO, size: int, member: str, pos: int, entry_type: int, length: int
) -> Finding:
    """An entry whose declared length runs past the end: a torn write, or a bad length?

    A torn write leaves a clean prefix of a valid entry. A corrupt length field instead
    swallows the entries after it; influxd would drop them all, so that is an error.
    """
    if _all_zero(stream, pos, size):
        return _torn(member, pos, "zero-filled tail")
    rest = size - pos - ENTRY_HEADER_SIZE
    detail = f"entry declares {length} bytes, {rest} remain"
    if entry_type not in (WRITE, DELETE, DELETE_RANGE):
        problem = f"unknown entry type {entry_type}"
    else:
        try:
            used = block_length(read_at(stream, pos + ENTRY_HEADER_SIZE, rest))
        except SnappyError as exc:
            problem = f"payload is not snappy ({exc})"
        else:
            if used is None:
                return _torn(member, pos, detail)
            after = pos + ENTRY_HEADER_SIZE + used
            if after == size:
                return _torn(member, pos, f"{detail}, yet its payload is whole")
            if _all_zero(stream, after, size):
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


def _all_zero(stream: BinaryIO, start: int, end: int) -> bool:
    pos = start
    while pos < end:
        chunk = read_at(stream, pos, min(_ZERO_SCAN, end - pos))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        pos += len(chunk)
    return True


def _entry_problem(stream: BinaryIO, pos: int, entry_type: int, length: int) -> str | None:
    """Why the entry at pos is unreadable, "short" if the stream ended, or None if fine."""
    if entry_type not in (WRITE, DELETE, DELETE_RANGE):
        return f"unknown entry type {entry_type}"
    payload = read_at(stream, pos + ENTRY_HEADER_SIZE, length)
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
    while i < n:
        value_type = b[i]
        if i + 3 > n:
            return "write entry cut short in a key header"
        i += 3 + _U16(b, i + 1)[0]
        if i + 4 > n:
            return "write entry cut short in a key"
        count = _U32(b, i)[0]
        i += 4
        size = _FIXED_VALUE_SIZE.get(value_type)
        if size is not None:
            i += count * (8 + size)
        elif value_type == _STRING:
            for _ in range(count):
                if i + 12 > n:
                    return "write entry cut short in a string value"
                i += 12 + _U32(b, i + 8)[0]
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
        i += 4 + int.from_bytes(b[i : i + 4], "big")
    if i > len(b):
        return "delete-range entry cut short in a key"
    return None
