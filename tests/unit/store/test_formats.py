"""Format readers against small files built here in the real on-disk formats."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cramjam
import pytest
from hypothesis import given
from hypothesis import strategies as st

from influx_backupd.store import formats
from influx_backupd.store.formats import Finding, check_archive, classify_member
from influx_backupd.store.formats.bolt import check_bolt, fnv64a
from influx_backupd.store.formats.snappy import (
    SnappyError,
    block_length,
    decoded_length,
    decompress,
)
from influx_backupd.store.formats.tsm import check_tsm
from influx_backupd.store.formats.wal import check_wal, check_wal_buffer

# --------------------------------------------------------------------------- writers


def snappy_literal(data: bytes) -> bytes:
    """A valid snappy block made of literals only (enough to feed the decoder)."""
    out = bytearray()
    n = len(data)
    while True:  # uvarint preamble
        if n < 0x80:
            out.append(n)
            break
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    for i in range(0, len(data), 1000):
        chunk = data[i : i + 1000]
        if len(chunk) <= 60:
            out.append((len(chunk) - 1) << 2)
        else:  # tag 61: two little-endian length bytes follow
            out.append(61 << 2)
            out += (len(chunk) - 1).to_bytes(2, "little")
        out += chunk
    return bytes(out)


def snappy_elements(block: bytes) -> list[tuple[int, int]]:
    """(offset, kind) of each element of a snappy block: kind 0 literal, 1-3 copies."""
    _, pos = decoded_length(block)
    found = []
    while pos < len(block):
        tag, kind = block[pos], block[pos] & 0x03
        found.append((pos, kind))
        if kind == 0:
            n = tag >> 2
            extra = n - 59 if n >= 60 else 0
            if extra:
                n = int.from_bytes(block[pos + 1 : pos + 1 + extra], "little")
            pos += 1 + extra + n + 1
        else:
            pos += 1 + (1, 2, 4)[kind - 1]
    return found


def tsm_file(series: dict[bytes, list[bytes]], block_type: int = 0) -> bytes:
    """A TSM file: one block per payload, keys sorted, index and footer at the end."""
    out = bytearray(struct.pack(">IB", 0x16D116D1, 1))
    index = bytearray()
    for key in sorted(series):
        entries = []
        for n, payload in enumerate(series[key]):
            data = bytes([block_type]) + payload
            offset = len(out)
            out += struct.pack(">I", zlib.crc32(data)) + data
            entries.append(struct.pack(">qqqI", n * 10, n * 10 + 9, offset, len(data) + 4))
        index += struct.pack(">H", len(key)) + key + struct.pack(">BH", block_type, len(entries))
        index += b"".join(entries)
    index_offset = len(out)
    return bytes(out + index + struct.pack(">Q", index_offset))


def bolt_meta_page(
    page_id: int, page_size: int, txid: int, pgid: int, *, corrupt: bool = False
) -> bytes:
    header = struct.pack("<QHHI", page_id, 0x04, 0, 0)  # 0x04: meta page flag
    body = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, page_size, 0, 3, 0, 2, pgid, txid)
    checksum = fnv64a(body) ^ (1 if corrupt else 0)
    page = header + body + struct.pack("<Q", checksum)
    return page + bytes(page_size - len(page))


def bolt_file(
    page_size: int = 4096, pgid: int = 4, corrupt: tuple[int, ...] = (), pages: int = 4
) -> bytes:
    meta0 = bolt_meta_page(0, page_size, txid=8, pgid=pgid, corrupt=0 in corrupt)
    meta1 = bolt_meta_page(1, page_size, txid=7, pgid=pgid, corrupt=1 in corrupt)
    return meta0 + meta1 + bytes(page_size * (pages - 2))


def wal_write_payload(key: bytes, values: list[float]) -> bytes:
    body = struct.pack(">BH", 1, len(key)) + key + struct.pack(">I", len(values))
    return body + b"".join(struct.pack(">qd", t, v) for t, v in enumerate(values))


def wal_entry(entry_type: int, payload: bytes) -> bytes:
    compressed = snappy_literal(payload)
    return struct.pack(">BI", entry_type, len(compressed)) + compressed


def wal_file(entries: int = 3) -> bytes:
    return b"".join(
        wal_entry(1, wal_write_payload(b"cpu,host=a#!~#value", [float(i)] * 50))
        for i in range(entries)
    )


def run(check: object, data: bytes, **kw: bool) -> list[Finding]:
    assert callable(check)
    result: list[Finding] = check(io.BytesIO(data), len(data), "m", **kw)
    return result


def severities(findings: list[Finding]) -> list[str]:
    return [f.severity for f in findings]


# --------------------------------------------------------------------------- snappy


def test_snappy_decodes_literals_and_all_copy_kinds() -> None:
    stream = b"".join(
        [
            b"\x1d",  # preamble: 29 bytes out
            b"\x0cabcd",  # literal "abcd"
            b"\x11\x04",  # copy1: len 8, offset 4 (overlapping)
            b"\x08XYZ",  # literal "XYZ"
            b"\x16\x0f\x00",  # copy2: len 6, offset 15
            b"\x0b\x09\x00\x00\x00",  # copy4: len 3, offset 9
            b"\x05\x01",  # copy1: len 5, offset 1 (a run)
        ]
    )
    assert decompress(stream) == b"abcdabcdabcdXYZabcdabXYZZZZZZ"


def test_snappy_long_literal_and_multibyte_preamble() -> None:
    data = bytes(range(200))
    assert decompress(bytes([0xC8, 0x01, 0xF0, 199]) + data) == data


@given(st.binary(max_size=5000))
def test_snappy_literal_round_trip(data: bytes) -> None:
    assert decompress(snappy_literal(data)) == data


@pytest.mark.parametrize(
    "stream",
    [
        b"",  # no preamble
        bytes([0x05, 0x01, 0x01]),  # copy before any output
        bytes([0x08, 0x0C, *b"abcd", 0x11, 0x00]),  # copy with offset 0
        bytes([0x08, 0x0C, *b"abcd", 0x11, 0x05]),  # offset beyond output
        bytes([0x05, 0x0C, *b"abcd"]),  # output shorter than declared
        bytes([0x03, 0x0C, *b"abcd"]),  # output longer than declared
        bytes([0x04, 0x0C, *b"ab"]),  # literal cut short
        bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00]),  # impossible declared length
    ],
)
def test_snappy_rejects_malformed(stream: bytes) -> None:
    with pytest.raises(SnappyError):
        decompress(stream)


@given(st.binary(max_size=20000), st.binary(max_size=20))
def test_snappy_agrees_with_a_real_encoder(data: bytes, after: bytes) -> None:
    """Blocks from snappy's own encoder (copies of every kind, not only literals): decoded
    whole, and block_length finds where each ends with other bytes after it."""
    block = bytes(cramjam.snappy.compress_raw(data))
    assert decompress(block) == data
    assert block_length(block + after) == len(block)
    assert block_length(block[:-1]) is None


def test_snappy_block_length_tells_prefix_from_whole_block() -> None:
    block = snappy_literal(b"hello world" * 20)
    assert block_length(block + b"\x01\x00\x00") == len(block)
    assert block_length(block[:-5]) is None  # a write cut short
    assert block_length(block[:1]) is None
    with pytest.raises(SnappyError):
        block_length(bytes([0x10, 0x05, 0x01]))  # copy before any output


# --------------------------------------------------------------------------- TSM

SERIES = {
    b"cpu,host=a#!~#value": [b"\x11" * 300, b"\x22" * 200],
    b"mem,host=a#!~#used": [b"\x33" * 100],
}


def test_tsm_valid_passes_shallow_and_deep() -> None:
    data = tsm_file(SERIES)
    assert run(check_tsm, data) == []
    assert run(check_tsm, data, deep=True) == []


def test_tsm_flipped_byte_in_block_is_caught_only_by_deep() -> None:
    data = bytearray(tsm_file(SERIES))
    data[5 + 4 + 100] ^= 0xFF  # inside the first block's data
    assert run(check_tsm, bytes(data)) == []
    findings = run(check_tsm, bytes(data), deep=True)
    assert severities(findings) == ["error"]
    assert "CRC32 mismatch" in findings[0].message
    assert "cpu,host=a" in findings[0].message


@pytest.mark.parametrize("cut", [1, 8, 50])
def test_tsm_truncated_is_caught(cut: int) -> None:
    data = tsm_file(SERIES)[:-cut]
    findings = run(check_tsm, data)
    assert "error" in severities(findings)


@pytest.mark.parametrize("index_offset", [0, 4, 10**9])
def test_tsm_bad_index_offset_is_caught(index_offset: int) -> None:
    data = tsm_file(SERIES)[:-8] + struct.pack(">Q", index_offset)
    findings = run(check_tsm, data)
    assert severities(findings) == ["error"]
    assert "index offset" in findings[0].message


def test_tsm_block_outside_data_section_is_caught() -> None:
    data = tsm_file({b"k": [b"x" * 20]})
    index_offset = len(data) - 8 - (2 + 1 + 3 + 28)
    # Point the only block's offset into the index itself.
    entry = index_offset + 2 + 1 + 3
    data = data[: entry + 16] + struct.pack(">q", index_offset - 4) + data[entry + 24 :]
    findings = run(check_tsm, data)
    assert severities(findings) == ["error"]
    assert "outside the data section" in findings[0].message


def test_tsm_bad_magic_and_block_type_mismatch() -> None:
    assert "bad magic" in run(check_tsm, b"\0" * 40)[0].message
    data = bytearray(tsm_file({b"k": [b"x" * 20]}, block_type=1))
    data[-8 - 28 - 3] = 0  # index says float, the block says integer
    findings = run(check_tsm, bytes(data), deep=True)
    assert severities(findings) == ["error"]
    assert "block type 1 disagrees" in findings[0].message


def test_tsm_reads_in_bounded_chunks() -> None:
    """No single read may ask for the whole file (TSM files reach 2 GB)."""
    data = tsm_file({f"k{i:05}".encode(): [bytes(500)] for i in range(400)})
    sizes: list[int] = []

    class Recording(io.BytesIO):
        def read(self, n: int | None = -1, /) -> bytes:
            sizes.append(-1 if n is None else n)
            return super().read(n)

    assert check_tsm(Recording(data), len(data), "m", deep=True) == []
    assert sizes and -1 not in sizes and max(sizes) < len(data) // 2


# --------------------------------------------------------------------------- Bolt


@pytest.mark.parametrize(
    ("data", "digest"),
    [(b"", 0xCBF29CE484222325), (b"a", 0xAF63DC4C8601EC8C), (b"foobar", 0x85944171F73967E8)],
)
def test_fnv64a_matches_published_vectors(data: bytes, digest: int) -> None:
    # The bolt writer below uses fnv64a too, so pin it to the FNV-1a reference values.
    assert fnv64a(data) == digest


def test_bolt_valid_passes() -> None:
    assert run(check_bolt, bolt_file()) == []
    assert run(check_bolt, bolt_file(page_size=8192)) == []


def test_bolt_truncated_is_caught() -> None:
    findings = run(check_bolt, bolt_file(pgid=10, pages=4))
    assert severities(findings) == ["error"]
    assert "truncated" in findings[0].message


@pytest.mark.parametrize("page", [0, 1])
def test_bolt_one_bad_meta_is_a_warning(page: int) -> None:
    findings = run(check_bolt, bolt_file(corrupt=(page,)))
    assert severities(findings) == ["warning"]
    assert f"meta page {page}" in findings[0].message
    assert "checksum mismatch" in findings[0].message


def test_bolt_bad_meta0_with_large_pages_still_finds_meta1() -> None:
    findings = run(check_bolt, bolt_file(page_size=16384, corrupt=(0,)))
    assert severities(findings) == ["warning"]


def test_bolt_both_metas_bad_is_an_error() -> None:
    findings = run(check_bolt, bolt_file(corrupt=(0, 1)))
    assert severities(findings) == ["error"]
    assert "both meta pages invalid" in findings[0].message


def test_bolt_truncation_uses_newest_valid_meta() -> None:
    # Meta 0 (txid 8) is bad; meta 1 (txid 7) says 4 pages, which the file has.
    data = bytearray(bolt_file(pgid=4))
    data[:4096] = bolt_meta_page(0, 4096, txid=8, pgid=50, corrupt=True)
    assert severities(run(check_bolt, bytes(data))) == ["warning"]
    # Valid meta 0 with the higher txid claiming 50 pages: truncated.
    data[:4096] = bolt_meta_page(0, 4096, txid=8, pgid=50)
    assert severities(run(check_bolt, bytes(data))) == ["error"]


# --------------------------------------------------------------------------- WAL


WalCheck = Callable[..., list[Finding]]


@pytest.fixture(params=["stream", "buffer"])
def wal_check(request: pytest.FixtureRequest) -> WalCheck:
    """check_wal from a stream (a member too big to hold) or from memory (the usual case)."""

    def check(data: bytes, *, deep: bool = False) -> list[Finding]:
        if request.param == "stream":
            return check_wal(io.BytesIO(data), len(data), "m", deep=deep)
        return check_wal_buffer(data, "m", deep=deep)

    return check


DEPTHS = pytest.mark.parametrize("deep", [False, True], ids=["framing", "deep"])


@DEPTHS
def test_wal_valid_and_empty_pass(wal_check: WalCheck, deep: bool) -> None:
    delete_range = struct.pack(">qqI", 0, 100, 3) + b"k,a"
    data = wal_file() + wal_entry(2, b"cpu,host=a") + wal_entry(3, delete_range)
    assert wal_check(data, deep=deep) == []
    assert wal_check(b"", deep=deep) == []


@DEPTHS
@pytest.mark.parametrize("cut", [1, 3, 20])
def test_wal_torn_tail_is_a_warning_only(wal_check: WalCheck, deep: bool, cut: int) -> None:
    data = wal_file()
    findings = wal_check(data[:-cut], deep=deep)
    assert severities(findings) == ["warning"]
    last = len(data) - len(wal_file(1))
    assert f"torn tail at offset {last} (influxd tolerates this)" in findings[0].message


@DEPTHS
def test_wal_zero_filled_tail_is_a_warning(wal_check: WalCheck, deep: bool) -> None:
    assert severities(wal_check(wal_file() + bytes(4096), deep=deep)) == ["warning"]


@DEPTHS
def test_wal_corrupt_entry_type_in_the_middle_is_an_error(wal_check: WalCheck, deep: bool) -> None:
    one = len(wal_file(1))
    bad_type = bytearray(wal_file())
    bad_type[one] = 9
    findings = wal_check(bytes(bad_type), deep=deep)
    assert severities(findings) == ["error"]
    assert f"corrupt entry at offset {one}: unknown entry type 9" in findings[0].message


@DEPTHS
@pytest.mark.parametrize(
    ("preamble", "problem"),
    [
        (b"\x00", "too small"),  # declares 0 bytes, yet elements follow
        (b"\xff\xff\xff\x7f", "impossible"),  # 268 MB from a few hundred bytes
        (b"\xff\xff\xff\xff\xff", "overlong length preamble"),
    ],
)
def test_wal_impossible_snappy_preamble_is_caught_by_framing_too(
    wal_check: WalCheck, deep: bool, preamble: bytes, problem: str
) -> None:
    payload = snappy_literal(wal_write_payload(b"cpu,host=a#!~#value", [1.0] * 50))
    _, used = decoded_length(payload)
    bad = preamble + payload[used:]
    data = wal_file(1) + struct.pack(">BI", 1, len(bad)) + bad + wal_file(1)
    findings = wal_check(data, deep=deep)
    assert severities(findings) == ["error"]
    assert f"corrupt entry at offset {len(wal_file(1))}: undecodable snappy" in findings[0].message
    assert problem in findings[0].message


def test_wal_damaged_snappy_inside_a_payload_is_caught_only_by_deep(wal_check: WalCheck) -> None:
    one = len(wal_file(1))
    bad_payload = bytearray(wal_file())
    bad_payload[one + 5] ^= 0x7F  # the snappy preamble: declared length now wrong, yet plausible
    assert wal_check(bytes(bad_payload)) == []
    findings = wal_check(bytes(bad_payload), deep=True)
    assert severities(findings) == ["error"]
    assert "undecodable snappy payload" in findings[0].message

    # a real encoder's copy elements: one copy's offset pointed before the start of the output
    payload = wal_write_payload(b"cpu,host=a#!~#value", [1.0] * 200)
    block = bytearray(cramjam.snappy.compress_raw(payload))
    copy = next(pos for pos, kind in snappy_elements(bytes(block)) if kind == 2)
    block[copy + 1 : copy + 3] = (0xFFFF).to_bytes(2, "little")  # its 2-byte offset
    data = struct.pack(">BI", 1, len(block)) + bytes(block) + wal_file(1)
    assert wal_check(data) == []
    assert severities(wal_check(data, deep=True)) == ["error"]


def test_wal_last_entry_of_garbage_is_an_error_and_of_zeros_a_torn_tail(
    wal_check: WalCheck,
) -> None:
    """A whole last entry that does not decode: zeros at its end are what a crash leaves (the
    file grown, its last pages never written), garbage is damage. Before, both were a torn
    tail: a segment of one entry with a byte flipped passed `verify --deep` with a warning,
    and influxd dropped every point in it."""
    payload = wal_write_payload(b"cpu,host=a#!~#value", [float(i) for i in range(400)])
    block = bytearray(cramjam.snappy.compress_raw(payload))
    assert len(block) > 2048
    copy = next(pos for pos, kind in snappy_elements(bytes(block)) if kind == 2)
    flipped = bytearray(block)
    flipped[copy + 1 : copy + 3] = (0xFFFF).to_bytes(2, "little")  # a copy before the start
    damaged = wal_file(1) + struct.pack(">BI", 1, len(flipped)) + bytes(flipped)
    findings = wal_check(damaged, deep=True)
    assert severities(findings) == ["error"]
    assert f"influxd would drop its {len(flipped)} bytes" in findings[0].message

    unwritten = bytearray(block)
    unwritten[-1024:] = bytes(1024)
    torn = wal_file(1) + struct.pack(">BI", 1, len(unwritten)) + bytes(unwritten)
    findings = wal_check(torn, deep=True)
    assert severities(findings) == ["warning"]
    assert "torn tail" in findings[0].message


@DEPTHS
def test_wal_corrupt_length_in_the_middle_is_an_error_not_a_torn_tail(
    wal_check: WalCheck, deep: bool
) -> None:
    data = bytearray(wal_file())
    data[1:5] = struct.pack(">I", len(data))  # first entry now claims the whole file
    findings = wal_check(bytes(data), deep=deep)
    assert severities(findings) == ["error"]
    assert "corrupt entry at offset 0: length field says" in findings[0].message


def test_wal_write_entry_structure_is_checked_deep(wal_check: WalCheck) -> None:
    payload = wal_write_payload(b"k", [1.0, 2.0])[:-3]  # last value cut short
    data = wal_entry(1, payload) + wal_file(1)
    assert wal_check(data) == [], "framing does not decode"
    findings = wal_check(data, deep=True)
    assert severities(findings) == ["error"]
    assert "write entry cut short" in findings[0].message


def test_wal_stream_shorter_than_its_size_is_an_error() -> None:
    data = wal_file()
    for deep in (False, True):
        findings = check_wal(io.BytesIO(data[:-10]), len(data), "m", deep=deep)
        assert findings == [
            Finding("error", "m", f"data ends before its declared size of {len(data)} bytes")
        ]


# --------------------------------------------------------------------------- archives


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _pb(number: int, value: bytes | int) -> bytes:
    """One protobuf field: a varint, or a length-delimited one."""
    if isinstance(value, int):
        return bytes([number << 3]) + _uvarint(value)
    return bytes([number << 3 | 2]) + _uvarint(len(value)) + value


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def meta_store(*databases: tuple[bytes, bytes, list[bytes]], max_ids: bool = True) -> bytes:
    """A 1.x meta store as meta.proto defines it, with the fields it requires: Data{1: term,
    2: index, 3: cluster id, 5: DatabaseInfo{1: name, 2: default retention policy,
    3: RetentionPolicyInfo{1: name, 2: duration, 3: shard group duration, 4: replicas}},
    7, 8, 9: the highest node, shard group and shard ids}."""

    def policy(name: bytes) -> bytes:
        return _pb(1, name) + _pb(2, 0) + _pb(3, 3600) + _pb(4, 1)

    body = b"".join(
        _pb(5, _pb(1, name) + _pb(2, default) + b"".join(_pb(3, policy(p)) for p in rps))
        for name, default, rps in databases
    )
    ids = _pb(7, 0) + _pb(8, 0) + _pb(9, 0) if max_ids else b""
    return _pb(1, 0) + _pb(2, 5) + _pb(3, 1) + body + ids


META_STORE = meta_store((b"x", b"autogen", [b"autogen"]))


def cold_members() -> dict[str, bytes]:
    return {
        "influxdb.conf": b"[meta]\n",
        "meta/meta.db": META_STORE,
        "data/x/autogen/1/000000001-000000001.tsm": tsm_file(SERIES),
        "data/x/autogen/1/fields.idx": b"\x00\x06\x01\x03\x0a\x0c\x0a\x03cpu\x12\x05\x0a\x01v\x10\x01",  # a real one
        "wal/x/autogen/1/_00001.wal": wal_file(),
        "wal/x/autogen/1/_00002.wal": b"",
    }


def test_archive_valid_passes(tmp_path: Path) -> None:
    report = check_archive(make_tar(tmp_path / "a.tar", cold_members()), deep=True)
    assert report.findings == []
    assert report.ok
    assert report.members == 6
    assert report.top_dirs == {"influxdb.conf", "meta", "data", "wal"}
    assert report.checked == {"fields.idx": 1, "meta.db": 1, "tsm": 1, "wal": 2}


def test_archive_flipped_tsm_byte_is_caught_deep(tmp_path: Path) -> None:
    members = cold_members()
    tsm = bytearray(members["data/x/autogen/1/000000001-000000001.tsm"])
    tsm[5 + 4 + 10] ^= 0x01
    members["data/x/autogen/1/000000001-000000001.tsm"] = bytes(tsm)
    path = make_tar(tmp_path / "a.tar", members)
    assert check_archive(path).ok
    report = check_archive(path, deep=True)
    assert not report.ok
    assert [f.member for f in report.errors] == ["data/x/autogen/1/000000001-000000001.tsm"]


def damaged_members() -> dict[str, bytes]:
    """Three damaged members among good ones: a TSM block (deep), a WAL entry's snappy
    elements (deep) and a WAL entry's type (framing)."""
    members = cold_members()
    tsm_name = "data/x/autogen/1/000000001-000000001.tsm"
    tsm = bytearray(members[tsm_name])
    tsm[5 + 4 + 10] ^= 0x01
    members[tsm_name] = bytes(tsm)
    one = len(wal_file(1))
    wal = bytearray(wal_file())
    wal[one + 5] ^= 0x7F  # a plausible but wrong snappy preamble
    members["wal/x/autogen/1/_00001.wal"] = bytes(wal)
    wal = bytearray(wal_file())
    wal[one] = 9
    members["wal/x/autogen/1/_00003.wal"] = bytes(wal)
    members["wal/x/autogen/1/_00004.wal"] = wal_file(5)
    return members


def test_archive_wal_snappy_damage_is_caught_deep(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "a.tar", damaged_members())
    assert [f.member for f in check_archive(path).errors] == ["wal/x/autogen/1/_00003.wal"]
    assert [f.member for f in check_archive(path, deep=True).errors] == [
        "data/x/autogen/1/000000001-000000001.tsm",
        "wal/x/autogen/1/_00001.wal",
        "wal/x/autogen/1/_00003.wal",
    ]


@pytest.mark.parametrize("deep", [False, True])
def test_archive_members_too_big_to_hold_are_checked_from_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deep: bool
) -> None:
    path = make_tar(tmp_path / "a.tar", damaged_members())
    held = check_archive(path, deep=deep, sha256=True)
    monkeypatch.setattr(formats, "IN_FLIGHT_MAX", 1)  # one member at a time
    assert check_archive(path, deep=deep, sha256=True) == held
    monkeypatch.setattr(formats, "HOLD_MAX", 100)  # every WAL and TSM member streamed
    streamed = check_archive(path, deep=deep, sha256=True)
    assert streamed == held
    assert held.checked == {"fields.idx": 1, "meta.db": 1, "tsm": 1, "wal": 4}


def test_archive_sha256_is_the_files_whatever_its_state(tmp_path: Path) -> None:
    good = make_tar(tmp_path / "a.tar", damaged_members())
    whole = good.read_bytes()
    offset, size = member_offsets(good)["wal/x/autogen/1/_00003.wal"]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: offset + size // 2])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x1f\x8b" + bytes(3000))
    for path in (good, cut, junk):
        for deep in (False, True):
            report = check_archive(path, deep=deep, sha256=True)
            assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), path
    assert check_archive(good).sha256 is None, "not asked for"
    assert check_archive(tmp_path / "missing.tar", sha256=True).sha256 is None


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar}


@pytest.mark.parametrize("member", ["data/x/autogen/1/000000001-000000001.tsm", "influxdb.conf"])
def test_archive_truncated_inside_a_member_is_reported(tmp_path: Path, member: str) -> None:
    path = make_tar(tmp_path / "a.tar", cold_members())
    offset, size = member_offsets(path)[member]
    path.write_bytes(path.read_bytes()[: offset + size // 2])
    report = check_archive(path)
    assert not report.ok
    assert [f.member for f in report.errors] == ["<archive>"]
    assert "truncated" in report.errors[0].message


def test_archive_cut_at_member_boundary_is_reported(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "a.tar", cold_members())
    offset, size = member_offsets(path)["wal/x/autogen/1/_00001.wal"]
    # Cut right after a whole member (data padded to 512): tarfile itself sees a clean end.
    path.write_bytes(path.read_bytes()[: offset + -(-size // 512) * 512])
    report = check_archive(path)
    assert [f.member for f in report.errors] == ["<archive>"]
    assert "end-of-archive marker" in report.errors[0].message


def test_archive_not_a_tar_or_missing(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x1f\x8b" + bytes(2000))
    for path in (junk, tmp_path / "missing.tar"):
        report = check_archive(path)
        assert [f.member for f in report.errors] == ["<archive>"]


def test_archive_finds_09_bolt_shards_and_raft_db(tmp_path: Path) -> None:
    members = {
        "meta/raft.db": bolt_file(),
        "data/db/default/1": bolt_file(corrupt=(0, 1)),
        "data/db/default/2": b"not bolt at all" * 100,
        "hh/1/1": b"hinted handoff",
    }
    report = check_archive(make_tar(tmp_path / "a.tar", members))
    assert report.checked == {"bolt": 2}
    assert [(f.severity, f.member) for f in report.findings] == [("error", "data/db/default/1")]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("data/x/autogen/1/000000002-000000003.tsm", "tsm"),
        ("./wal/x/autogen/1/_00012.wal", "wal"),
        ("meta/raft.db", "bolt"),
        ("meta/meta.db", "meta.db"),
        ("data/x/autogen/1", "bolt?"),
        ("data/x/autogen/1/fields.idx", "fields.idx"),
        ("data/x/autogen/1/000000002-000000003.tsm.tmp", None),
        ("wal/x/autogen/1/00012.wal", None),
    ],
)
def test_classify_member(name: str, kind: str | None) -> None:
    assert classify_member(name) == kind


_VALUE_SIZES = {1: 8, 2: 8, 3: 1, 5: 8}


@st.composite
def write_entries(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A decoded WAL write entry (keys of every value type) and the offsets where keys end."""
    body, ends = b"", []
    for _ in range(draw(st.integers(1, 5))):
        value_type = draw(st.sampled_from([1, 2, 3, 4, 5]))
        key = draw(st.binary(min_size=1, max_size=40))
        values = b""
        count = draw(st.integers(0, 4))
        for _ in range(count):
            if value_type == 4:
                text = draw(st.binary(max_size=20))
                values += struct.pack(">qI", 1, len(text)) + text
            else:
                values += struct.pack(">q", 1) + bytes(_VALUE_SIZES[value_type])
        body += struct.pack(">BH", value_type, len(key)) + key + struct.pack(">I", count) + values
        ends.append(len(body))
    return body, ends


@given(write_entries(), st.data())
def test_write_entry_walk_whole_and_cut(
    entry: tuple[bytes, list[int]], data: st.DataObject
) -> None:
    from influx_backupd.store.formats.wal import _write_problem

    body, ends = entry
    assert _write_problem(body) is None
    assert _write_problem(memoryview(body)) is None
    cut = data.draw(st.integers(1, len(body) - 1)) if len(body) > 1 else len(body)
    problem = _write_problem(memoryview(body)[:cut])
    if cut in ends:
        assert problem is None, "a cut between keys leaves whole keys"
    else:
        assert problem is not None and "cut short" in problem, (cut, problem)
    assert _write_problem(b"\x09" + body[1:]) == "write entry has unknown value type 9"
