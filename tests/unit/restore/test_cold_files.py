"""Which shards of a cold archive restore --database takes by files and which a throwaway
replays whole (restore/cold_files.py's plan): decided from the tar headers and the WAL's
entry headers alone."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from influx_backupd.restore import cold_files
from influx_backupd.store.formats.wal import DELETE, DELETE_RANGE, WRITE, entry_types


def _entry(kind: int, payload: bytes = b"\x05hello") -> bytes:
    return bytes([kind]) + struct.pack(">I", len(payload)) + payload


def _archive(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_entry_types_reads_only_the_headers_and_stops_where_they_stop_chaining() -> None:
    segment = _entry(WRITE) + _entry(DELETE_RANGE) + _entry(WRITE)
    assert entry_types(io.BytesIO(segment), len(segment)) == {WRITE, DELETE_RANGE}
    torn = _entry(WRITE) + b"\x00" * 40 + _entry(DELETE)  # influxd's replay stops at the zeros
    assert entry_types(io.BytesIO(torn), len(torn)) == {WRITE}
    assert entry_types(io.BytesIO(b""), 0) == set()


def test_shards_go_whole_only_where_their_tsm_files_cannot_be_taken_as_they_are(
    tmp_path: Path,
) -> None:
    tsm = b"\x16\xd1\x16\xd1\x01" + b"x" * 20
    archive = _archive(
        tmp_path / "a.tar",
        {
            "meta/meta.db": b"meta",
            "data/db/autogen/1/000000002-000000003.tsm": tsm,
            "data/db/autogen/1/fields.idx": b"f",
            "wal/db/autogen/1/_00003.wal": _entry(WRITE) * 3,
            "data/db/autogen/2/000000001-000000001.tsm": tsm,
            "data/db/autogen/2/000000001-000000001.tombstone": b"t",
            "data/db/autogen/3/000000001-000000001.tsm": tsm,
            "wal/db/autogen/3/_00001.wal": _entry(WRITE) + _entry(DELETE),
            "data/db/year/4/compacted.tsm": tsm,
            "wal/db/year/5/_00001.wal": _entry(WRITE),  # nothing compacted yet: no TSM
            "data/db/_series/00/0000": b"s",
            "data/other/autogen/6/000000001-000000001.tsm": tsm,
            "data/db/autogen/7/000000001-000000001.tsm": tsm,
            "data/db/autogen/8/000000001-000000001.tsm": tsm,
        },
        links={  # relative symlinks inside the archive pass its checks
            "data/db/autogen/7/000000002-000000001.tsm": "000000001-000000001.tsm",
            "wal/db/autogen/8/_00001.wal": "../1/_00003.wal",
        },
    )
    planned = cold_files.plan(archive, "db")
    assert set(planned.shards) == {1, 2, 3, 4, 5, 7, 8}
    assert planned.by_files == {1}
    whole = {sid: s.whole_because for sid, s in planned.shards.items() if s.whole_because}
    assert "tombstone" in str(whole[2]) and planned.shards[2].tombstones == 1
    assert whole[3] == "_00001.wal holds a delete"
    assert "not a GEN-SEQ.tsm name" in str(whole[4])
    assert planned.shards[5].policy == "year" and not planned.shards[5].tsm
    assert whole[7] == "000000002-000000001.tsm is not a regular file"
    assert whole[8] == "_00001.wal is not a regular file"
    # the throwaway gets the meta, every WAL, and every data file but shard 1's TSM files
    keep = planned.keep
    assert keep("meta/meta.db") and keep("wal/db/autogen/1/_00003.wal")
    assert not keep("data/db/autogen/1/000000002-000000003.tsm")
    assert keep("data/db/autogen/1/fields.idx") and keep("data/db/_series/00/0000")
    assert keep("data/db/autogen/2/000000001-000000001.tsm")
    assert not keep("data/other/autogen/6/000000001-000000001.tsm")
    assert not keep("wal/other/autogen/6/_00001.wal")


def test_switched_off_every_shard_is_replayed_whole_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _archive(
        tmp_path / "a.tar",
        {"meta/meta.db": b"m", "data/db/autogen/1/000000001-000000001.tsm": b"t"},
    )
    assert cold_files.plan(archive, "db").by_files == {1}
    monkeypatch.setenv(cold_files.SWITCH, "off")
    planned = cold_files.plan(archive, "db")
    assert planned.by_files == set()
    assert planned.keep("data/db/autogen/1/000000001-000000001.tsm")


def _tsm(key: bytes = b"cpu,host=a#!~#value") -> bytes:
    """A minimal valid TSM file: one integer block, its index entry, the footer."""
    head = struct.pack(">IB", 0x16D116D1, 1)
    data = bytes([1]) + b"\x00" * 8
    block = struct.pack(">I", zlib.crc32(data)) + data
    index = (
        struct.pack(">H", len(key))
        + key
        + struct.pack(">BH", 1, 1)
        + struct.pack(">qqqI", 0, 10, len(head), len(block))
    )
    return head + block + index + struct.pack(">Q", len(head) + len(block))


def _export(directory: Path, shards: dict[int, dict[str, bytes]]) -> Path:
    """A portable backup as `influxd backup -portable` writes one (what the throwaway made)."""
    directory.mkdir()
    (directory / "20260101T000000Z.meta").write_bytes(b"meta")
    files = []
    for sid, members in shards.items():
        name = f"20260101T000000Z.s{sid}.tar.gz"
        with tarfile.open(directory / name, "w:gz") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(f"db/autogen/{sid}/{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        files.append(
            {"database": "db", "policy": "autogen", "shardID": sid, "fileName": name, "size": 1}
        )
    manifest = {"meta": {"fileName": "20260101T000000Z.meta", "size": 4}, "files": files}
    (directory / "20260101T000000Z.manifest").write_text(json.dumps(manifest))
    return directory


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]


def test_the_upload_holds_the_archive_s_files_in_order_then_the_wal_s_above_them(
    tmp_path: Path,
) -> None:
    old, older, wal_points, whole = _tsm(b"a#!~#v"), _tsm(b"b#!~#v"), _tsm(b"c#!~#v"), _tsm()
    archive = _archive(
        tmp_path / "a.tar",
        {  # listed out of order: the tar's order must not matter
            "data/db/autogen/1/000000010-000000002.tsm": old,
            "data/db/autogen/1/000000009-000000001.tsm": older,
            "wal/db/autogen/1/_00002.wal": _entry(WRITE),
            "data/db/autogen/3/000000001-000000001.tsm": whole,
            "wal/db/autogen/3/_00001.wal": _entry(DELETE),
        },
    )
    planned = cold_files.plan(archive, "db")
    export = _export(
        tmp_path / "export",
        {1: {"000000001-000000001.tsm": wal_points, "fields.idx": b"f"}, 3: {"x.tsm": whole}},
    )
    built = cold_files.write_portable(archive, planned, export, tmp_path / "out")
    out = tmp_path / "out"
    assert _members(out / "20260101T000000Z.s1.tar.gz") == [
        ("db/autogen/1/000000009-000000001.tsm", older),
        ("db/autogen/1/000000010-000000002.tsm", old),
        ("db/autogen/1/000000011-000000001.tsm", wal_points),  # the newest generation
    ]
    # the whole shard is the throwaway's export as it made it
    assert (out / "20260101T000000Z.s3.tar.gz").read_bytes() == (
        export / "20260101T000000Z.s3.tar.gz"
    ).read_bytes()
    manifest = json.loads((out / "20260101T000000Z.manifest").read_text())
    sizes = {f["shardID"]: f["size"] for f in manifest["files"]}
    with gzip.open(out / "20260101T000000Z.s1.tar.gz") as gz:
        assert sizes[1] == len(gz.read())  # the unpacked tar's size, as the tool lists it
    assert sizes[3] == 1 and (out / "20260101T000000Z.meta").read_bytes() == b"meta"
    assert (built.shards_by_files, built.shards_whole, built.files_from_throwaway) == (1, 1, 1)
    assert built.whole_because == {3: "_00001.wal holds a delete"}


def test_a_damaged_tsm_file_is_refused_before_the_live_server_sees_it(tmp_path: Path) -> None:
    damaged = bytearray(_tsm())
    damaged[-1] ^= 0xFF  # the footer's index offset
    archive = _archive(
        tmp_path / "a.tar", {"data/db/autogen/1/000000001-000000001.tsm": bytes(damaged)}
    )
    export = _export(tmp_path / "export", {1: {}})
    with pytest.raises(ValueError, match=r"000000001-000000001\.tsm.*not sent to the live server"):
        cold_files.write_portable(archive, cold_files.plan(archive, "db"), export, tmp_path / "out")
