"""Checks of a shard's index files (influxd 1.5+), as influxdb 1.6 reads them:
- `index/N/MANIFEST` (tsdb/index/tsi1/partition.go): JSON, "version" 1, its "files" the .tsi
  and .tsl files influxd opens in that dir. A bad MANIFEST fails the shard; a missing one
  makes influxd open an empty index partition, so the shard serves no points.
- `.tsi` index files (index_file.go): magic "TSI1", an 82-byte trailer ending in version 1
  that places five blocks inside the file; the measurement block ends in its own version 1.
- `.tsl` log files (log_file.go): entries of flag u8, uvarint series id, then name, tag key
  and tag value (uvarint length + bytes each), then a CRC-32 (IEEE, big-endian) of the bytes
  before it. influxd replays entries up to the first one that is cut short or fails its
  checksum and silently ignores the rest.
- `fields.idx` (tsdb/shard.go, either index type): magic 00 06 01 03, then a protobuf
  MeasurementFieldSet.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import struct
import zlib
from collections import Counter
from typing import BinaryIO

from influx_backupd.store.formats.findings import Finding, Window, read_at
from influx_backupd.store.formats.protobuf import (
    embedded,
    fields_of,
    framing_problem,
    text_of,
    uvarint,
)

TSI_MAGIC = b"TSI1"
TSI_TRAILER_SIZE = 2 + 10 * 8
MEASUREMENT_TRAILER_SIZE = 2 + 8 * 8
FIELDS_MAGIC = bytes([0, 6, 1, 3])
MANIFEST = "MANIFEST"
INDEX_SUFFIXES = (".tsi", ".tsl")
_TSI_BLOCKS = (
    "measurement",
    "series id set",
    "tombstone series id set",
    "series sketch",
    "tombstone series sketch",
)
# A bad .tsl entry is damage, not a torn tail, when a whole entry follows it; looked for this
# far (influxd compacts a log file at max-index-log-file-size, 1 MiB by default).
_RESYNC_MAX = 1 << 20
# An entry looked for there names no measurement, tag key or value longer than a series key
# can be (influxd's MaxKeyLength, 64 KiB): longer ones are noise, not checksummed.
_MAX_FIELD = 1 << 16
_WINDOW = 1 << 20
# A roaring bitmap's first 4 bytes, little-endian: this cookie, or with run containers this
# one in the low 16 bits (RoaringBitmap/roaring serialization).
_ROARING, _ROARING_RUNS = 12346, 12347
_MAX_ENTRY = 1 + 10 + 3 * (10 + _MAX_FIELD) + 4


def check_tsi(stream: BinaryIO, size: int, member: str) -> list[Finding]:
    if size < len(TSI_MAGIC) + TSI_TRAILER_SIZE:
        return [_err(member, f"{size} bytes: shorter than a TSI1 header and trailer")]
    magic = read_at(stream, 0, len(TSI_MAGIC))
    if magic != TSI_MAGIC:
        return [_err(member, f"not a TSI index file: starts {magic!r}, not {TSI_MAGIC!r}")]
    trailer = read_at(stream, size - TSI_TRAILER_SIZE, TSI_TRAILER_SIZE)
    if len(trailer) < TSI_TRAILER_SIZE:
        return [_err(member, f"data ends before its declared size of {size} bytes")]
    version = struct.unpack_from(">H", trailer, TSI_TRAILER_SIZE - 2)[0]
    if version != 1:
        return [_err(member, f"index file version {version}, influxd reads 1")]
    fields = struct.unpack_from(">10Q", trailer, 0)
    end = size - TSI_TRAILER_SIZE
    for i, name in enumerate(_TSI_BLOCKS):
        offset, length = fields[2 * i], fields[2 * i + 1]
        if offset + length > end or (length and offset < len(TSI_MAGIC)):
            return [
                _err(
                    member,
                    f"its trailer places the {name} block (offset {offset}, {length} bytes) "
                    f"outside the file's {size} bytes",
                )
            ]
    for i, name in enumerate(_TSI_BLOCKS[1:], 1):
        offset, length = fields[2 * i], fields[2 * i + 1]
        problem = _block_problem(name, read_at(stream, offset, min(length, 8))) if length else None
        if problem is not None:
            return [_err(member, f"its {name} block at offset {offset}: {problem}")]
    offset, length = fields[0], fields[1]
    if length < MEASUREMENT_TRAILER_SIZE:
        return [_err(member, f"measurement block of {length} bytes is shorter than its trailer")]
    block_version = struct.unpack(">H", read_at(stream, offset + length - 2, 2))[0]
    if block_version != 1:
        return [_err(member, f"measurement block version {block_version}, influxd reads 1")]
    return []


def _block_problem(name: str, head: bytes) -> str | None:
    """What influxd's IndexFile.Open makes of a block's first bytes: the series id sets are
    roaring bitmaps (tsdb.SeriesIDSet), the sketches HLL++ (pkg/estimator/hll Plus); either
    failing to unmarshal fails the shard (its series all unserved)."""
    if name.endswith("sketch"):
        # version byte, precision p (NewPlus takes 4..18), then the sparse flag
        if len(head) < 3 or not 4 <= head[1] <= 18:
            return f"not an HLL sketch (precision {head[1:2].hex() or 'missing'}, wants 4-18)"
        return None
    cookie = int.from_bytes(head[:4], "little")
    if (
        len(head) < 8
        or cookie & 0xFFFF not in (_ROARING_RUNS, _ROARING)
        or (cookie & 0xFFFF == _ROARING and cookie != _ROARING)
    ):
        return f"not a roaring bitmap (starts {head[:4].hex()}, wants cookie 3a30 or 3b30)"
    return None


def check_tsl(stream: BinaryIO, size: int, member: str) -> list[Finding]:
    """Every entry and its checksum, as influxd's LogFile.open replays them; read in windows
    (a member may be gigabytes, or sparse)."""
    window = Window(stream, size)
    pos = 0
    while pos < size:
        entry = _tsl_entry(window, pos)
        if isinstance(entry, int):
            pos = entry
            continue
        if entry == "overflow":
            message = f"entry at offset {pos} has a varint past 64 bits: influxd cannot open it"
            return [_err(member, message)]
        return _tsl_stop(window, pos, entry, member)
    return []


def _tsl_entry(
    window: Window, pos: int, max_field: int | None = None, spent: list[int] | None = None
) -> int | str:
    """The offset after the entry at pos, or why influxd stops there ("short", "checksum")
    or fails ("overflow"); "long" when a name, key or value exceeds max_field. spent[0]
    grows by the bytes checksummed."""
    size = window.size
    i = pos + 1
    if i > size:
        return "short"
    for field in range(4):  # series id, then name, key and value lengths
        value, used, problem = uvarint(window.get(i, 10), 0)
        if problem:
            return problem
        i += used
        if field:
            if max_field is not None and value > max_field:
                return "long"
            i += value
            if i > size:
                return "short"
    if i + 4 > size:
        return "short"
    if spent is not None:
        spent[0] += i - pos
    crc, at = 0, pos
    while at < i:  # a field may be larger than a window
        chunk = window.get(at, min(_WINDOW, i - at))
        crc = zlib.crc32(chunk, crc)
        at += len(chunk)
    if crc != struct.unpack(">I", window.get(i, 4))[0]:
        return "checksum"
    return i + 4


def _tsl_stop(window: Window, pos: int, why: str, member: str) -> list[Finding]:
    """influxd stops replaying at pos. A torn tail (a write cut short) is what a crash leaves:
    a warning, as influxd tolerates it (IndexListing makes it an error in an older log, which
    no crash tears). A whole entry after it, or no readable entry at all, is damage: influxd
    would silently drop those series from the index. So is a last entry whole by its lengths
    that fails its checksum with its checksum written (not zeros: the pages a crash leaves
    unwritten read as zeros), as a bad WAL entry is: a changed byte, its series dropped."""
    what = "cut short" if why == "short" else "fails its checksum"
    lost = window.size - pos
    if pos == 0:
        message = f"no readable entry: the first {what}; influxd would ignore all {lost} bytes"
        return [_err(member, f"{message} (their series unindexed)")]
    # the bytes searched, and room for the longest entry that starts among them, at once
    end = min(window.size, pos + 1 + _RESYNC_MAX)
    ahead = window.get(pos, end - pos + _MAX_ENTRY)
    end = pos + len(ahead[: end - pos].rstrip(b"\0"))  # no entry hides in zeros at the end
    nearby = Window(io.BytesIO(ahead), len(ahead))
    # Each start costs a few uvarints (64 here) and a checksum of what it claims: bounded, so
    # that hostile bytes (a plausible entry at every offset) cost time linear in what is
    # searched. Every start is tried when the bytes could be a torn tail; past that the
    # verdict is an error anyway, and the search only names the entry that follows.
    budget, spent = 64 * min(end - pos, _MAX_ENTRY) + 16 * (end - pos) + _WINDOW, [0]
    for start in range(1, end - pos):
        if isinstance(_tsl_entry(nearby, start, _MAX_FIELD, spent), int):
            return [
                _err(
                    member,
                    f"{_corrupt(pos, what)}, yet a whole entry follows at offset {pos + start}: "
                    f"influxd would drop the {lost} bytes from {pos} on",
                )
            ]
        if spent[0] + 64 * start > budget:
            break  # entries that nearly parse everywhere: no write cut short
    else:
        # a write cut short leaves at most one entry's bytes, and no checksum written
        if end - pos <= _MAX_ENTRY and (why == "short" or window.size - end >= 4):
            return [
                Finding(
                    "warning",
                    member,
                    f"torn tail at offset {pos} (influxd tolerates this): last entry {what}, "
                    f"{lost} bytes ignored",
                )
            ]
    return [
        _err(
            member,
            f"{_corrupt(pos, what)}, and no whole entry found in the {end - pos} bytes from "
            f"there, more than a write cut short leaves: influxd would drop the {lost} bytes "
            f"from {pos} on",
        )
    ]


# check_tsl's torn-tail warning, which IndexListing.judge_logs reads back
_TORN = re.compile(
    r"torn tail at offset (\d+) \(influxd tolerates this\): last entry (.+), (\d+) bytes ignored"
)
# an index file's name: L<level>-<sequence, decimal>.tsi/.tsl (tsi1 FormatIndexFileName)
_FILE_ID = re.compile(r"L\d+-(\d+)\.ts[il]")


def _corrupt(pos: int, what: str) -> str:
    return f"corrupt entry at offset {pos} ({what})"


def check_fields(stream: BinaryIO, size: int, member: str) -> list[Finding]:
    """The magic and the protobuf framing of measurements and their fields, read in windows."""
    window = Window(stream, size)
    magic = window.get(0, 4)
    if magic != FIELDS_MAGIC:
        return [
            _err(member, f"unknown fields index format: starts {magic!r}, not {FIELDS_MAGIC!r}")
        ]
    # MeasurementFieldSet{1: MeasurementFields{1: name, 2: Field{1: name, 2: type}}}
    problem = framing_problem(window, 4, size, {1: {2: {}}})
    if problem is None:
        problem = _fields_problem(window, size)
    return [] if problem is None else [_err(member, f"garbled field list: {problem}")]


# influxql's DataType of a stored field (Float, Integer, String, Boolean, Unsigned): influxd
# panics on a query of a field of any other type ("unreachable"), or serves none of it
_FIELD_TYPES = frozenset({1, 2, 3, 4, 9})


def _fields_problem(window: Window, size: int) -> str | None:
    """What influxd needs of each measurement's fields, the framing being whole: a name, and
    every field a name and a type a field can have. A changed byte the framing tolerates (a
    type, a length) otherwise made a restore whose influxd panicked on a query of that field
    or lost a measurement's fields."""
    for start, end in embedded(window, 4, size, 1):
        name = b""
        for number, value in fields_of(window, start, end):
            if number == 1 and isinstance(value, tuple):
                name = text_of(window, value)
            elif number == 2 and isinstance(value, tuple):
                field_name, field_type = b"", None
                for inner, got in fields_of(window, *value):
                    if inner == 1 and isinstance(got, tuple):
                        field_name = text_of(window, got)
                    elif inner == 2 and isinstance(got, int):
                        field_type = got
                where = f"at offset {value[0]}"
                if not field_name:
                    return f"a field without a name {where}"
                if field_type not in _FIELD_TYPES:
                    return f"field {field_name[:64]!r} has type {field_type}, none a field has ({where})"
        if not name:
            return f"a measurement without a name at offset {start}"
    return None


class IndexListing:
    """What a MANIFEST needs of the rest of the archive: the members beside it. Fed every
    regular member name (in any order) and every MANIFEST; asked at the end."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}  # index partition dir -> file names
        self._manifests: dict[str, list[str]] = {}  # its MANIFEST's path -> files it lists
        self._series_dbs: set[str] = set()
        self._tsi_dbs: Counter[str] = Counter()

    def saw(self, name: str) -> None:
        parts = name.split("/")
        if parts[0] != "data" or len(parts) < 3:
            return
        if parts[2] == "_series":
            self._series_dbs.add(parts[1])
        elif len(parts) == 7 and parts[4] == "index":
            self._members.setdefault(posixpath.dirname(name), set()).add(parts[6])
            if parts[6].endswith(INDEX_SUFFIXES):
                self._tsi_dbs[parts[1]] += 1

    def manifest(self, data: bytes, member: str) -> list[Finding]:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return [_err(member, f"not JSON ({exc}): influxd cannot open this shard's index")]
        files = doc.get("files", []) if isinstance(doc, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return [_err(member, 'not an index MANIFEST: wants an object with a "files" list')]
        if doc.get("version") != 1:
            return [_err(member, f"version {doc.get('version')!r}: influxd 1.x reads version 1")]
        self._manifests[member] = files
        return []

    def findings(self) -> list[Finding]:
        found = []
        for manifest, files in sorted(self._manifests.items()):
            here = self._members.get(posixpath.dirname(manifest), set())
            missing = [f for f in files if f not in here]
            if missing:
                found.append(
                    _err(manifest, f"lists {', '.join(missing)}, not in the archive beside it")
                )
            unlisted = sorted(n for n in here if n.endswith(INDEX_SUFFIXES) and n not in files)
            if unlisted:
                # A warning: influxd deletes them at open as a compaction's leftovers (a crash
                # mid-compaction leaves its output unlisted, its inputs still listed: no loss);
                # only a stale MANIFEST would lose their series.
                found.append(
                    Finding(
                        "warning",
                        manifest,
                        f"does not list {', '.join(unlisted)} beside it: influxd deletes "
                        "them when it opens the shard (a compaction's leftovers; their series "
                        "are lost unless the files it lists hold them)",
                    )
                )
        for folder, names in sorted(self._members.items()):
            if MANIFEST not in names and any(n.endswith(INDEX_SUFFIXES) for n in names):
                found.append(
                    _err(
                        f"{folder}/{MANIFEST}",
                        "missing beside the index files in its dir: influxd would open the "
                        "partition empty (its series unindexed)",
                    )
                )
        for db in sorted(set(self._tsi_dbs) - self._series_dbs):
            found.append(
                _err(
                    f"data/{db}/_series",
                    "missing: the shards' TSI index files refer to it, influxd would serve "
                    "none of their series",
                )
            )
        return found

    def judge_logs(self, findings: list[Finding]) -> list[Finding]:
        """findings, a torn tail in an older log made an error: a crash tears only the newest
        log in a MANIFEST (influxd appends to it alone); an older one was whole when the next
        began, so an entry cut short or failing there is damage, its series lost."""
        newest: dict[str, tuple[int, str]] = {}  # MANIFEST's dir -> its newest log
        for manifest, files in self._manifests.items():
            logs = [(int(m[1]), f) for f in files if (m := _FILE_ID.fullmatch(f)) and ".tsl" in f]
            if logs:
                newest[posixpath.dirname(manifest)] = max(logs)
        judged = []
        for finding in findings:
            folder, base = posixpath.split(finding.member)
            torn = _TORN.fullmatch(finding.message) if finding.severity == "warning" else None
            latest = newest.get(folder)
            if torn is not None and latest is not None and base != latest[1]:
                pos, what, lost = torn.groups()
                finding = _err(
                    finding.member,
                    f"entry at offset {pos} {what} in a log older than {latest[1]} (only the "
                    f"newest log can have a torn tail): influxd would drop the {lost} bytes "
                    f"from {pos} on",
                )
            judged.append(finding)
        return judged


def _err(member: str, message: str) -> Finding:
    return Finding("error", member, message)
