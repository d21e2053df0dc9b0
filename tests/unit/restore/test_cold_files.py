"""Which shards of a cold archive restore --database takes by files and which a throwaway
replays whole (restore/cold_files.py's plan): decided from the tar headers and the WAL's
entry headers alone."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import pytest

from influx_backupd.restore import cold_files
from influx_backupd.store.formats.wal import DELETE, DELETE_RANGE, WRITE, entry_types


def _entry(kind: int, payload: bytes = b"\x05hello") -> bytes:
    return bytes([kind]) + struct.pack(">I", len(payload)) + payload


def _archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
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
        },
    )
    planned = cold_files.plan(archive, "db")
    assert set(planned.shards) == {1, 2, 3, 4, 5}
    assert planned.by_files == {1}
    whole = {sid: s.whole_because for sid, s in planned.shards.items() if s.whole_because}
    assert "tombstone" in str(whole[2]) and planned.shards[2].tombstones == 1
    assert whole[3] == "_00001.wal holds a delete"
    assert "not a GEN-SEQ.tsm name" in str(whole[4])
    assert planned.shards[5].policy == "year" and not planned.shards[5].tsm
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
