"""restore/deletes.py on files: which shards of a portable backup hold tombstones, how they are
laid out for the throwaway, and the backup packed again from what it left (the throwaway's part
is played here by hand; tests/integration/test_restore_deletes.py runs a real one)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from influx_backupd.restore import deletes

STORE = b"meta store bytes"  # what influxd's meta.db holds; opaque here


def _meta_file() -> bytes:
    """A portable .meta: protobuf {1: bytes Data, 2: uint64 MaxNodeID}."""
    return bytes([1 << 3 | 2, len(STORE)]) + STORE + b"\x10\x01"


def _tar(path: Path, prefix: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _backup(root: Path, shards: dict[int, tuple[str, dict[str, bytes]]]) -> Path:
    """A portable backup dir: sid -> (database, files of its tar)."""
    root.mkdir()
    (root / "T.meta").write_bytes(_meta_file())
    entries = []
    for sid, (db, files) in shards.items():
        name = f"T.s{sid}.tar.gz"
        _tar(root / name, f"{db}/autogen/{sid}", files)
        size = len(gzip.decompress((root / name).read_bytes()))
        entries.append(
            {"database": db, "policy": "autogen", "shardID": sid, "fileName": name, "size": size}
        )
    manifest = {"meta": {"fileName": "T.meta", "size": len(STORE)}, "files": entries}
    (root / "T.manifest").write_text(json.dumps(manifest))
    return root


TSM1, TSM2 = "000000001-000000001.tsm", "000000002-000000001.tsm"
TOMB1 = "000000001-000000001.tombstone"


def test_only_shards_with_tombstones_are_found(tmp_path: Path) -> None:
    backup = _backup(
        tmp_path / "b",
        {
            1: ("db", {TSM1: b"a" * 10, TOMB1: b"t"}),
            2: ("db", {TSM1: b"b" * 10}),
            3: ("db", {TSM2: b"c", TOMB1: b"t"}),  # its tombstone's file is in no tar here
        },
    )
    found, report = deletes.find(backup)
    assert [s.sid for s in found] == [1]
    assert found[0].tombstones == {TOMB1} and found[0].tsm == {TSM1}
    assert report.tombstones == 2
    assert list(report.not_applied) == ["T.s3.tar.gz"]
    assert "not in this tar" in report.not_applied["T.s3.tar.gz"]


@pytest.mark.parametrize("database", ["..", ".", "", "a/b", "a\\b"])
def test_a_database_name_that_is_no_path_element_is_never_laid_out(
    tmp_path: Path, database: str
) -> None:
    backup = _backup(tmp_path / "b", {1: ("x", {TSM1: b"a", TOMB1: b"t"})})
    manifest = json.loads((backup / "T.manifest").read_text())
    manifest["files"][0]["database"] = database
    (backup / "T.manifest").write_text(json.dumps(manifest))
    found, report = deletes.find(backup)
    assert found == []
    assert report.tombstones == 1 and report.left == 1
    assert "no valid database" in report.not_applied["T.s1.tar.gz"]


def test_the_throwaway_gets_the_meta_store_and_the_shards_files(tmp_path: Path) -> None:
    backup = _backup(
        tmp_path / "b",
        {1: ("db", {TSM1: b"a" * 10, TOMB1: b"t", "fields.idx": b"x"}), 2: ("db", {TSM1: b"b"})},
    )
    found, _ = deletes.find(backup)
    meta, data = tmp_path / "meta", tmp_path / "data"
    deletes.lay_out(backup, found, meta, data)
    assert (meta / "meta.db").read_bytes() == STORE
    shard = data / "db" / "autogen" / "1"
    assert sorted(p.name for p in shard.iterdir()) == [TOMB1, TSM1]
    assert (shard / TSM1).read_bytes() == b"a" * 10
    assert not (data / "db" / "autogen" / "2").exists(), "a shard without deletes stays out"


def test_a_tar_holding_a_name_twice_is_restored_as_it_is(tmp_path: Path) -> None:
    """Not a tar influxd wrote: which copy would be meant is unknown, so none is dropped."""
    backup = _backup(tmp_path / "b", {1: ("db", {TSM1: b"a", TOMB1: b"t"})})
    with tarfile.open(backup / "T.s1.tar.gz", "w:gz") as tar:
        for name, data in ((TSM1, b"a"), (TSM1, b"b"), (TOMB1, b"t")):
            info = tarfile.TarInfo(f"db/autogen/1/{name}")
            info.size = 1
            tar.addfile(info, io.BytesIO(data))
    found, report = deletes.find(backup)
    assert found == []
    assert report.left == 1 and "twice" in report.not_applied["T.s1.tar.gz"]


def test_the_backup_is_packed_again_from_what_the_throwaway_left(tmp_path: Path) -> None:
    backup = _backup(
        tmp_path / "b",
        {1: ("db", {TSM1: b"a" * 10, TOMB1: b"t"}), 2: ("db", {TSM1: b"b" * 10})},
    )
    found, _ = deletes.find(backup)
    data = tmp_path / "data"
    deletes.lay_out(backup, found, tmp_path / "meta", data)
    # the compaction, by hand: the file rewritten without the deleted points
    shard = data / "db" / "autogen" / "1"
    (shard / TOMB1).unlink()
    (shard / TSM1).rename(shard / "000000001-000000002.tsm")
    (shard / "000000001-000000003.tsm.tmp").write_bytes(b"half")  # an aborted compaction
    (shard / "fields.idx").write_bytes(b"index")
    out = tmp_path / "out"
    assert deletes.pack(backup, found, data, out) == 0
    manifest = json.loads((out / "T.manifest").read_text())
    sizes = {e["fileName"]: e["size"] for e in manifest["files"]}
    with tarfile.open(out / "T.s1.tar.gz") as tar:
        assert tar.getnames() == ["db/autogen/1/000000001-000000002.tsm"]
    assert sizes["T.s1.tar.gz"] == len(gzip.decompress((out / "T.s1.tar.gz").read_bytes()))
    # the shard without deletes and the meta: the same files, linked
    assert (out / "T.s2.tar.gz").stat().st_ino == (backup / "T.s2.tar.gz").stat().st_ino
    assert (out / "T.meta").read_bytes() == _meta_file()
    assert manifest["meta"] == {"fileName": "T.meta", "size": len(STORE)}
    # the backup itself is as it was
    with tarfile.open(backup / "T.s1.tar.gz") as tar:
        assert sorted(n.rsplit("/", 1)[1] for n in tar.getnames()) == [TOMB1, TSM1]


def test_a_tombstone_the_throwaway_left_is_counted(tmp_path: Path) -> None:
    backup = _backup(tmp_path / "b", {1: ("db", {TSM1: b"a" * 10, TOMB1: b"t"})})
    found, _ = deletes.find(backup)
    data = tmp_path / "data"
    deletes.lay_out(backup, found, tmp_path / "meta", data)
    assert deletes.pack(backup, found, data, tmp_path / "out") == 1
    with tarfile.open(tmp_path / "out" / "T.s1.tar.gz") as tar:
        assert tar.getnames() == [f"db/autogen/1/{TSM1}"], "influxd restore takes only TSM"


def test_a_backup_on_another_filesystem_is_linked_by_symlink_never_copied(
    tmp_path: Path,
) -> None:
    """Only the tombstoned shards are written again; the rest stays where it is."""
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        backup = _backup(
            other / "b", {1: ("db", {TSM1: b"a", TOMB1: b"t"}), 2: ("db", {TSM1: b"b" * 10})}
        )
        found, _ = deletes.find(backup)
        data = tmp_path / "data"
        deletes.lay_out(backup, found, tmp_path / "meta", data)
        (data / "db" / "autogen" / "1" / TOMB1).unlink()
        out = tmp_path / "out"
        deletes.pack(backup, found, data, out)
        assert (out / "T.s2.tar.gz").is_symlink() and (out / "T.meta").is_symlink()
        assert (out / "T.s2.tar.gz").read_bytes() == (backup / "T.s2.tar.gz").read_bytes()
        assert not (out / "T.s1.tar.gz").is_symlink()
    finally:
        shutil.rmtree(other)
