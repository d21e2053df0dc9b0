"""Checks of a database's series file (influxd 1.5+): `data/DB/_series/PP/SSSS` segments and
`data/DB/_series/PP/index`, as influxdb 1.6's tsdb/series_segment.go and series_index.go read
them. Both index types keep one (an inmem server's too).

A segment is preallocated to its full size (4 MiB for segment 0, doubling up to 256 MiB) and
holds a 5-byte header (magic "SSEG", version 1), then entries: flag u8 (1 insert, 2 tombstone),
series id u64 big-endian, and for an insert the series key (uvarint length, then measurement
u16 length + bytes, uvarint tag count, each tag key and value u16 length + bytes). influxd
reads entries up to the first byte that is not a valid flag: zeros there are the unused rest of
the file, anything else is damage (influxd stops reading there, and writes new series over
it). A bad magic makes influxd fail to open the database; a garbled key makes it panic.
"""

from __future__ import annotations

import posixpath
import re
import struct
from typing import BinaryIO

from influx_backupd.store.formats.findings import Finding, Window, read_at

SEGMENT_MAGIC = b"SSEG"
INDEX_MAGIC = b"SIDX"
SEGMENT_HEADER_SIZE = 5
INDEX_HEADER_SIZE = 4 + 1 + 8 * 8
INSERT, TOMBSTONE = 0x01, 0x02
PARTITIONS = 8  # tsdb.SeriesFilePartitionN: ids of partition p are p+1, p+1+8, ...
_INDEX_ELEM_SIZE = 16
_U64 = struct.Struct(">Q").unpack_from
_U16 = struct.Struct(">H").unpack_from
_SLOT = struct.Struct(">QQ")  # a series index map slot: (offset, id) or (id, offset)
_ID_MASK = (1 << 64) - 1
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
# Segment file names are what strconv.ParseUint(name, 16) accepts; partition dirs are %02x.
_HEX = re.compile(r"[0-9a-fA-F]+")


def is_segment_name(base: str) -> bool:
    return bool(_HEX.fullmatch(base))


def segment_size(segment_id: int) -> int:
    """The size influxd maps a segment at (SeriesSegmentSize): 4 MiB doubling to 256 MiB."""
    return 1 << min(segment_id + 22, 28)


def _uvarint(data: bytes, i: int) -> tuple[int, int] | None:
    """(value, next index), or None when data ends first or the value overflows 64 bits."""
    value = shift = 0
    while i < len(data) and shift < 70:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return (value, i) if value < 1 << 64 else None
        shift += 7
    return None


def _key_problem(key: bytes) -> str | None:
    """Why a series key (without its length prefix) does not parse, or None."""
    if len(key) < 2:
        return "key shorter than its measurement length"
    i = 2 + _U16(key, 0)[0]
    tags = _uvarint(key, i)
    if i > len(key) or tags is None:
        return "measurement name or tag count runs past the key"
    count, i = tags
    for _ in range(min(count, len(key))):
        for _part in ("key", "value"):
            if i + 2 > len(key):
                return "tag runs past the key"
            i += 2 + _U16(key, i)[0]
    if i != len(key) or count > len(key):
        return f"key length says {len(key)} bytes, its measurement and {count} tags say otherwise"
    return None


def _header_problem(header: bytes, magic: bytes, size: int, what: str) -> str | None:
    """Magic, then version 1: what influxd needs to open the series file at all."""
    if len(header) < size or header[:4] != magic:
        start = f"starts {header[:4]!r}, not {magic!r}" if len(header) >= 4 else "too short"
        return f"not a {what}: {start} (influxd cannot open this database's series file)"
    return None if header[4] == 1 else f"{what} version {header[4]}, influxd reads 1"


def check_segment(stream: BinaryIO, size: int, member: str, *, deep: bool = False) -> list[Finding]:
    """Header always; deep: every entry up to the end of the data, and zeros after it."""
    header = read_at(stream, 0, SEGMENT_HEADER_SIZE)
    problem = _header_problem(header, SEGMENT_MAGIC, SEGMENT_HEADER_SIZE, "series segment")
    if problem is not None:
        return [Finding("error", member, problem)]
    parts = member.split("/")
    expected = segment_size(int(parts[-1], 16))
    if size < expected:
        return [
            Finding(
                "error",
                member,
                f"series segment is {size} bytes, not the {expected} influxd preallocates: "
                f"cut short, any series written past byte {size} are lost",
            )
        ]
    if not deep:
        return []
    partition = int(parts[-2], 16) if is_segment_name(parts[-2]) else None
    if partition is not None and partition >= PARTITIONS:
        partition = None  # not a dir influxd opens: no id rule to hold it to
    return _walk(Window(stream, size), size, member, partition)


def _walk(window: Window, size: int, member: str, partition: int | None) -> list[Finding]:
    pos = SEGMENT_HEADER_SIZE
    while pos < size:
        head = window.get(pos, 1 + 8 + 10)
        flag = head[0]
        if flag not in (INSERT, TOMBSTONE):
            return _after_end(window, pos, size, member, flag)
        if len(head) < 9:
            return [_bad(member, pos, "entry cut short in its series id")]
        series_id = _U64(head, 1)[0]
        if series_id == 0 or (partition is not None and (series_id - 1) % PARTITIONS != partition):
            return [_bad(member, pos, f"series id {series_id} does not belong to this partition")]
        if flag == TOMBSTONE:
            pos += 9
            continue
        length = _uvarint(head, 9)
        if length is None:
            return [_bad(member, pos, "unreadable series key length")]
        key_start = pos + length[1]
        key_end = key_start + length[0]
        if key_end > size:
            return [_bad(member, pos, f"series key of {length[0]} bytes runs past the end")]
        problem = _key_problem(window.get(key_start, key_end - key_start))
        if problem is not None:
            return [_bad(member, pos, f"garbled series key ({problem})")]
        pos = key_end
    return []


def _after_end(window: Window, pos: int, size: int, member: str, flag: int) -> list[Finding]:
    """influxd stops at pos: the rest must be the zeros the file was preallocated with."""
    at = pos
    while at < size:
        chunk = window.get(at, min(_CHUNK, size - at))
        if chunk == _ZEROS[: len(chunk)]:  # a memcmp: most of a segment is this
            at += len(chunk)
            continue
        stripped = chunk.lstrip(b"\0")
        if stripped:
            first = at + len(chunk) - len(stripped)
            return [
                _bad(
                    member,
                    pos,
                    f"flag {flag} ends the entries there, yet data follows (first non-zero "
                    f"byte at offset {first}): influxd would not read the series after it",
                )
            ]
        at += len(chunk)
    return []


def _bad(member: str, pos: int, detail: str) -> Finding:
    return Finding("error", member, f"corrupt series entry at offset {pos}: {detail}")


def check_series_index(stream: BinaryIO, size: int, member: str) -> list[Finding]:
    """The header (magic "SIDX", version 1) and where it places its two hash maps."""
    header = read_at(stream, 0, INDEX_HEADER_SIZE)
    problem = _header_problem(header, INDEX_MAGIC, INDEX_HEADER_SIZE, "series index")
    if problem is not None:
        return [Finding("error", member, problem)]
    count, capacity, key_off, key_size, id_off, id_size = struct.unpack_from(">6Q", header, 21)
    if count > capacity:
        return [
            Finding("error", member, f"its count of {count} series exceeds its capacity {capacity}")
        ]
    maps = {"key/id": (key_off, key_size), "id/offset": (id_off, id_size)}
    for name, (offset, length) in maps.items():
        if offset < INDEX_HEADER_SIZE or offset + length > size:
            return [
                Finding(
                    "error",
                    member,
                    f"its {name} map (offset {offset}, {length} bytes) lies outside the "
                    f"file's {size} bytes",
                )
            ]
        if length != capacity * _INDEX_ELEM_SIZE:
            return [
                Finding(
                    "error",
                    member,
                    f"its {name} map holds {length} bytes; its capacity {capacity} needs "
                    f"{capacity * _INDEX_ELEM_SIZE}",
                )
            ]
    return []


class SeriesFiles:
    """A series partition's index against the segments beside it, once the archive walk has
    seen them all (in any order); fed every segment and index member as a stream to read."""

    def __init__(self) -> None:
        self._segments: dict[str, dict[int, Window]] = {}  # dir -> segment id -> its bytes
        self._indexes: dict[str, tuple[BinaryIO, int]] = {}

    def saw(self, member: str, stream: BinaryIO, size: int) -> None:
        folder, base = posixpath.split(member)
        if base == "index":
            self._indexes[member] = (stream, size)
        elif is_segment_name(base):
            self._segments.setdefault(folder, {})[int(base, 16)] = Window(stream, size)

    def findings(self, deep: bool) -> list[Finding]:
        found = []
        for member, (stream, size) in sorted(self._indexes.items()):
            segments = self._segments.get(posixpath.dirname(member), {})
            problem = _index_against_segments(stream, size, segments, deep)
            if problem is not None:
                found.append(Finding("error", member, problem))
        return found


def _index_against_segments(
    stream: BinaryIO, size: int, segments: dict[int, Window], deep: bool
) -> str | None:
    """influxd trusts the index: it recovers only the entries after maxOffset (a maxOffset past
    the data loses those series), hands out ids after maxSeriesID, and reads a series key at
    every offset its maps hold (a wrong one: "slice bounds out of range", a panic at start)."""
    if check_series_index(stream, size, "") or not segments:
        return None  # its own check (or the segment check) says what is wrong
    header = read_at(stream, 0, INDEX_HEADER_SIZE)
    max_id, max_offset, count, capacity = struct.unpack_from(">4Q", header, 5)
    key_off, _, id_off, _ = struct.unpack_from(">4Q", header, 37)

    def entry(offset: int) -> tuple[int, int] | str:
        """(flag, series id) of the entry at offset (segment id << 32 | position)."""
        segment_id, pos = offset >> 32, offset & 0xFFFFFFFF
        if segment_id not in segments:
            return f"segment {segment_id:04x}, not in the archive beside it"
        head = segments[segment_id].get(pos, 9) if pos >= SEGMENT_HEADER_SIZE else b""
        if len(head) < 9:
            return f"position {pos}, outside segment {segment_id:04x}'s entries"
        return head[0], _U64(head, 1)[0]

    if count:
        at = entry(max_offset)
        if isinstance(at, str) or (deep and at[0] not in (INSERT, TOMBSTONE)):
            where = at if isinstance(at, str) else f"flag {at[0]}, not an entry"
            return (
                f"its maxOffset {max_offset:#x} points at {where}: influxd would not recover "
                "the series written after it"
            )
    if not deep:
        return None
    # every non-zero slot as offset << 64 | series id (ints sort fast), visited in offset
    # order: each segment is read front to back in windows, not a read a slot
    slots: list[int] = []
    for start, id_first in ((key_off, False), (id_off, True)):
        window = Window(stream, size)
        end = start + capacity * _INDEX_ELEM_SIZE
        for piece in range(start, end, _CHUNK):  # _CHUNK bytes hold whole slots
            elems = _SLOT.iter_unpack(window.get(piece, min(_CHUNK, end - piece)))
            if id_first:
                slots.extend(offset << 64 | series_id for series_id, offset in elems if offset)
            else:
                slots.extend(offset << 64 | series_id for offset, series_id in elems if offset)
    slots.sort()
    bad, first, highest = 0, "", 0
    for slot in slots:
        offset, series_id = slot >> 64, slot & _ID_MASK
        highest = max(highest, series_id)
        segment_id, pos = offset >> 32, offset & 0xFFFFFFFF
        head = segments[segment_id].get(pos, 9) if segment_id in segments else b""
        # what influxd reads there: this series' insert entry, its key after it
        found = len(head) == 9 and pos >= SEGMENT_HEADER_SIZE and head[0] == INSERT
        if found and _U64(head, 1)[0] == series_id:
            continue
        bad += 1
        if not first:
            at = entry(offset)
            what = at if isinstance(at, str) else f"flag {at[0]}, series id {at[1]}"
            first = f"series {series_id} at {offset:#x} ({what})"
    if bad:
        return (
            f"{bad} map slot(s) point at no insert entry of their series, first {first}: "
            "influxd would panic reading the key there"
        )
    if highest > max_id:
        return (
            f"its maxSeriesID {max_id} is below series id {highest} in its maps: influxd "
            "would hand that id out again"
        )
    return None
