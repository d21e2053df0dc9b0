"""Series-file and TSI readers against small files built here the way influxdb 1.6 writes them
(tsdb/series_segment.go, series_index.go, tsdb/index/tsi1/log_file.go)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from influx_backupd.store.formats import check_archive, classify_member
from influx_backupd.store.formats.series import (
    check_segment,
    check_series_index,
    segment_size,
)
from influx_backupd.store.formats.tsi import FIELDS_MAGIC, IndexListing, check_fields, check_tsl

SEGMENT = "data/db/_series/00/0000"


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def series_key(name: bytes, tags: dict[bytes, bytes]) -> bytes:
    body = struct.pack(">H", len(name)) + name + uvarint(len(tags))
    for k, v in tags.items():
        body += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return uvarint(len(body)) + body


def segment(*entries: bytes, size: int = segment_size(0)) -> bytes:
    data = b"SSEG\x01" + b"".join(entries)
    return data + bytes(size - len(data))


def insert(series_id: int, key: bytes) -> bytes:
    return b"\x01" + struct.pack(">Q", series_id) + key


def check_seg(data: bytes, member: str = SEGMENT) -> list[str]:
    return [
        f"{f.severity}: {f.message}"
        for f in check_segment(io.BytesIO(data), len(data), member, deep=True)
    ]


def test_segment_entries_pass() -> None:
    key = series_key(b"cpu", {b"host": b"a"})
    assert check_seg(segment(insert(1, key), insert(9, key), b"\x02" + struct.pack(">Q", 1))) == []


def test_segment_shallow_reads_the_header_only() -> None:
    data = segment(b"\x07garbage")
    assert check_segment(io.BytesIO(data), len(data), SEGMENT) == []
    assert "data follows" in check_seg(data)[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSEH\x01" + bytes(segment_size(0) - 5), "not a series segment"),
        (b"SSEG\x02" + bytes(segment_size(0) - 5), "version 2"),
        (segment(size=1000), "not the 4194304 influxd preallocates: cut short"),
        (segment(insert(2, series_key(b"cpu", {}))), "does not belong to this partition"),
        (segment(insert(1, uvarint(5) + b"\x00\x09cpu\x00")), "garbled series key"),
        (segment(insert(1, series_key(b"cpu", {})), b"\x00\x00\x05"), "data follows"),
        (segment(insert(1, uvarint(1 << 40))), "runs past the end"),
    ],
)
def test_segment_damage(data: bytes, message: str) -> None:
    assert len(found := check_seg(data)) == 1 and message in found[0], found


@given(st.binary(min_size=1, max_size=40), st.dictionaries(st.binary(max_size=9), st.binary()))
def test_any_series_key_parses(name: bytes, tags: dict[bytes, bytes]) -> None:
    assert check_seg(segment(insert(1, series_key(name, tags)))) == []


def series_index(count: int, capacity: int, *, key_size: int | None = None) -> bytes:
    size = capacity * 16
    key_size = size if key_size is None else key_size
    header = b"SIDX\x01" + struct.pack(
        ">8Q", count, 0, count, capacity, 69, key_size, 69 + key_size, size
    )
    return header + bytes(key_size + size)


def test_series_index() -> None:
    member = "data/db/_series/00/index"
    good = series_index(100, 128)
    assert check_series_index(io.BytesIO(good), len(good), member) == []
    bad = series_index(100, 128, key_size=16 * 100)
    assert "capacity 128" in check_series_index(io.BytesIO(bad), len(bad), member)[0].message
    over = series_index(200, 128)
    [finding] = check_series_index(io.BytesIO(over), len(over), member)
    assert finding.message == "its count of 200 series exceeds its capacity 128"
    cut = good[:-1]
    assert "outside" in check_series_index(io.BytesIO(cut), len(cut), member)[0].message
    wrong = b"SIDY" + good[4:]
    assert (
        "not a series index" in check_series_index(io.BytesIO(wrong), len(wrong), member)[0].message
    )


KEYS = [insert(1, series_key(b"cpu", {b"host": b"a"})), insert(9, series_key(b"mem", {}))]
OFFSETS = [5, 5 + len(KEYS[0])]  # segment 0 (<< 32), the positions of KEYS in it


def mapped_index(
    *, max_id: int = 9, max_offset: int = OFFSETS[1], id_map: list[tuple[int, int]] | None = None
) -> bytes:
    """A SIDX index of KEYS as influxd's compaction writes it; id_map: its (id, offset) slots."""
    capacity = 4
    key_map = [(offset, series_id) for series_id, offset in zip((1, 9), OFFSETS, strict=True)]
    id_map = [(1, OFFSETS[0]), (9, OFFSETS[1])] if id_map is None else id_map
    size = capacity * 16
    header = b"SIDX\x01" + struct.pack(
        ">8Q", max_id, max_offset, 2, capacity, 69, size, 69 + size, size
    )
    maps = b""
    for pairs in (key_map, id_map):
        maps += b"".join(struct.pack(">QQ", *pair) for pair in pairs).ljust(size, b"\0")
    return header + maps


def check_series_dir(tmp_path: Path, index: bytes, *, deep: bool) -> list[str]:
    archive = tmp_path / "series.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("index", index), ("0000", segment(*KEYS))):
            info = tarfile.TarInfo(f"data/db/_series/00/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return [str(f) for f in check_archive(archive, deep=deep).findings]


@pytest.mark.parametrize(
    ("index", "deep_only", "expected"),
    [
        # influxd recovers only entries after maxOffset: segment 1 -> 254 (audit: XOR byte 16)
        (mapped_index(max_offset=0xFE << 32 | OFFSETS[1]), False, "segment 00fe, not in the"),
        (
            mapped_index(max_offset=OFFSETS[1] + 3),
            True,
            "maxOffset 0x21 points at flag 0, not an entry",
        ),
        # a slot one byte off: influxd panics at start ("slice bounds out of range")
        (mapped_index(id_map=[(1, 6), (9, OFFSETS[1])]), True, "series 1 at 0x6 (flag 0,"),
        (mapped_index(id_map=[(1, 1 << 32 | 5)]), True, "(segment 0001, not in the archive"),
        (mapped_index(id_map=[(2, OFFSETS[0])]), True, "series 2 at 0x5 (flag 1, series id 1)"),
        (mapped_index(max_id=8), True, "maxSeriesID 8 is below series id 9"),
    ],
)
def test_series_index_against_its_segments(
    index: bytes, deep_only: bool, expected: str, tmp_path: Path
) -> None:
    assert check_series_dir(tmp_path, mapped_index(), deep=True) == []
    [deep] = check_series_dir(tmp_path, index, deep=True)
    assert deep.startswith("error: data/db/_series/00/index: ") and expected in deep, deep
    assert check_series_dir(tmp_path, index, deep=False) == ([] if deep_only else [deep])


def tsl_entry(
    flag: int, series_id: int, name: bytes = b"", key: bytes = b"", value: bytes = b""
) -> bytes:
    body = bytes([flag]) + uvarint(series_id)
    for part in (name, key, value):
        body += uvarint(len(part)) + part
    return body + struct.pack(">I", zlib.crc32(body))


def check_log(data: bytes) -> list[tuple[str, str]]:
    return [(f.severity, f.message) for f in check_tsl(io.BytesIO(data), len(data), "x.tsl")]


ENTRIES = [tsl_entry(0, i) for i in range(1, 6)] + [tsl_entry(2, 0, b"cpu")]


def test_tsl_entries_pass() -> None:
    assert check_log(b"".join(ENTRIES)) == []
    assert check_log(b"") == []


def test_tsl_torn_tail_is_a_warning() -> None:
    """influxd stops at the entry cut short or zero-filled, and carries on: a crash did that."""
    whole = b"".join(ENTRIES)
    for data in (whole[:-2], whole + ENTRIES[0][:3], whole + bytes(600)):
        [(severity, message)] = check_log(data)
        assert severity == "warning" and "torn tail" in message


def test_tsl_bad_entry_before_whole_ones_is_an_error() -> None:
    data = bytearray(b"".join(ENTRIES))
    data[len(ENTRIES[0]) + 1] ^= 0x04  # the second entry's series id: its CRC fails
    [(severity, message)] = check_log(bytes(data))
    assert severity == "error" and f"offset {len(ENTRIES[0])}" in message


def test_tsl_nothing_readable_is_an_error() -> None:
    """A log file zeroed (or garbled from its first byte): influxd indexes none of it."""
    [(severity, message)] = check_log(bytes(len(b"".join(ENTRIES))))
    assert severity == "error" and "no readable entry" in message


def test_tsl_hostile_bytes_take_linear_time() -> None:
    """After a bad entry, bytes that parse as endless huge entries (audit: 80 80 80 02, a 4 MiB
    length at every offset) cost one bounded search, not a checksum per offset of megabytes
    each (13+ min for 16 MB); and that much non-zero data is no torn write."""
    bad = bytearray(tsl_entry(1, 1, b"cpu", b"host", b"a"))
    bad[-1] ^= 0xFF
    for pattern in (b"\x80\x80\x80\x02", b"\x7f", b"\x01\x00\x00\x00\x00"):
        data = ENTRIES[0] + bytes(bad) + pattern * ((4 << 20) // len(pattern))
        [(severity, message)] = check_log(data)
        assert severity == "error" and "no whole entry found" in message, message


def _limited_check(archive: Path) -> str:
    """check_archive in a child with 2.5 GB of address space (the audit's ulimit -v)."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2_500_000_000, 2_500_000_000))\n"
        "from influx_backupd.store.formats import check_archive\n"
        "for f in check_archive(__import__('pathlib').Path(sys.argv[1]), deep=True).findings:\n"
        "    print(f)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(archive)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and not done.stderr, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("index/0/L0-00000001.tsl", tsl_entry(1, 1), "warning: {}: torn tail at offset 9 "),
        ("fields.idx", b"\x00\x06\x01\x03", "error: {}: garbled field list: field 0 "),
    ],
)
def test_a_large_sparse_member_is_read_in_windows(
    name: str, head: bytes, expected: str, tmp_path: Path
) -> None:
    """A 3 GiB member of one entry and holes (a 30 KB archive) was read whole: a MemoryError
    traceback under ulimit -v 2500000. Now its checker reads it 1 MiB at a time."""
    member = f"data/db/rp/1/{name}"
    path = tmp_path / "root" / member
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(3 << 30)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-S", "-cf", archive, "-C", tmp_path / "root", "data"], check=True)
    assert archive.stat().st_size < 1 << 20
    found = _limited_check(archive)
    assert found.startswith(expected.format(member)), found


def test_manifest_listing() -> None:
    listing = IndexListing()
    folder = "data/db/rp/1/index/0"
    for name in ("L0-00000002.tsl", "L1-00000001.tsi", "MANIFEST"):
        listing.saw(f"{folder}/{name}")
    listing.saw("data/db/_series/00/0000")
    doc = {"files": ["L0-00000002.tsl", "L1-00000001.tsi", "L1-00000003.tsi"], "version": 1}
    assert listing.manifest(json.dumps(doc).encode(), f"{folder}/MANIFEST") == []
    [missing] = listing.findings()
    assert missing.member == f"{folder}/MANIFEST" and "L1-00000003.tsi" in missing.message
    assert "version 2" in listing.manifest(b'{"files": [], "version": 2}', "m")[0].message
    assert "not JSON" in listing.manifest(b'{"files": [', "m")[0].message


def index_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"data/db/rp/1/index/0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_torn_tail_only_in_the_newest_log(tmp_path: Path) -> None:
    """A crash tears only the log influxd appends to (the newest); the same cut in an older
    one is damage (audit: influxd lost series), and a log after the MANIFEST in the tar too."""
    torn = b"".join(ENTRIES)[:-2]
    manifest = json.dumps({"files": ["L0-00000003.tsl", "L0-00000001.tsl"], "version": 1})
    files = {"L0-00000001.tsl": torn, "MANIFEST": manifest.encode(), "L0-00000003.tsl": torn}
    report = check_archive(index_tar(tmp_path / "i.tar", files))
    found = {f.member.rsplit("/", 1)[1]: (f.severity, f.message) for f in report.findings}
    assert found["L0-00000003.tsl"][0] == "warning"
    severity, message = found["L0-00000001.tsl"]
    assert severity == "error" and "in a log older than L0-00000003.tsl" in message, message


def test_a_manifest_not_listing_a_file_beside_it(tmp_path: Path) -> None:
    """influxd 1.6 deletes index files its MANIFEST does not list when it opens the shard."""
    manifest = json.dumps({"files": ["L0-00000003.tsl"], "version": 1}).encode()
    log = b"".join(ENTRIES)
    files = {"L0-00000003.tsl": log, "L1-00000002.tsi": b"", "MANIFEST": manifest}
    report = check_archive(index_tar(tmp_path / "i.tar", files))
    [warning] = [f for f in report.findings if f.member.endswith("MANIFEST")]
    assert warning.severity == "warning"
    assert warning.message.startswith("does not list L1-00000002.tsi beside it: influxd deletes")


def test_index_files_without_manifest() -> None:
    listing = IndexListing()
    listing.saw("data/db/rp/1/index/3/L0-00000001.tsl")
    assert [f.member for f in listing.findings()] == [
        "data/db/rp/1/index/3/MANIFEST",
        "data/db/_series",
    ]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("data/db/_series/00/0000", "series"),
        ("data/db/_series/07/000a", "series"),
        ("data/db/_series/00/index", "series index"),
        ("data/db/_series/00/0000.initializing", None),
        ("data/db/rp/1/index/0/MANIFEST", "MANIFEST"),
        ("data/db/rp/1/index/0/L0-00000001.tsl", "tsl"),
        ("data/db/rp/1/index/0/L3-00000008.tsi", "tsi"),
        ("data/db/rp/1/fields.idx", "fields.idx"),
        ("./data/db/rp/1/fields.idx", "fields.idx"),
    ],
)
def test_classify(name: str, kind: str | None) -> None:
    assert classify_member(name) == kind


def test_archive_counts_what_it_did_not_read(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("influxdb.conf", b"x"),
            ("meta/leftover.db", b"x"),
            ("data/db/rp/1/000000001-000000001.tsm.tombstone", b""),
            (SEGMENT, segment(insert(1, series_key(b"cpu", {})))),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = check_archive(path, deep=True)
    assert report.findings == []
    assert report.checked == {"series": 1}
    assert report.unread == {".conf": 1, ".db": 1, ".tombstone": 1}


def test_tsl_last_entry_failing_a_written_checksum_is_damage() -> None:
    """Audit: a byte changed in the last entry of a log (its series id, a name, the checksum
    itself) was a "torn tail" warning; influxd then dropped that series from the index and the
    restore lost its points. A crash leaves the unwritten bytes zeros: a checksum written is
    no torn write. Zeroed, it still is one."""
    whole = b"".join(ENTRIES)
    last = len(whole) - len(ENTRIES[-1])
    for at in (last + 1, len(whole) - 2):  # the series id, the checksum
        data = bytearray(whole)
        data[at] ^= 0x01
        [(severity, message)] = check_log(bytes(data))
        assert severity == "error" and f"offset {last}" in message, message
    zeroed = whole[:-4] + bytes(4)
    [(severity, message)] = check_log(zeroed)
    assert severity == "warning" and "torn tail" in message, message


def _pb(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return uvarint(number << 3) + uvarint(value)
    return uvarint(number << 3 | 2) + uvarint(len(value)) + value


def fields_idx(measurements: dict[bytes, list[tuple[bytes, int]]]) -> bytes:
    """fields.idx as influxd 1.6 writes it: magic, then MeasurementFieldSet{1: MeasurementFields{
    1: name, 2: Field{1: name, 2: type}}}."""
    body = b"".join(
        _pb(1, _pb(1, name) + b"".join(_pb(2, _pb(1, f) + _pb(2, t)) for f, t in fields))
        for name, fields in measurements.items()
    )
    return FIELDS_MAGIC + body


def check_field_list(data: bytes) -> list[str]:
    return [f.message for f in check_fields(io.BytesIO(data), len(data), "fields.idx")]


def test_fields_idx_names_and_types_are_checked() -> None:
    """Audit G: a field's type byte changed (1 to 33) passed verify --deep (framing only); the
    restored influxd panicked ("unreachable") on the first query of that field. A name emptied
    lost a measurement's fields."""
    good = {b"cpu": [(b"value", 1), (b"n", 2), (b"s", 3), (b"ok", 4), (b"u", 9)], b"mem": []}
    assert check_field_list(fields_idx(good)) == []
    [bad] = check_field_list(fields_idx({b"cpu": [(b"value", 33)]}))
    assert "field b'value' has type 33, none a field has" in bad, bad
    [unnamed] = check_field_list(fields_idx({b"cpu": [(b"", 1)]}))
    assert "a field without a name" in unnamed, unnamed
    [nameless] = check_field_list(fields_idx({b"": [(b"value", 1)]}))
    assert "a measurement without a name" in nameless, nameless
