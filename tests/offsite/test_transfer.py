"""What travels with each upload: a checksum of its body the store can check (CRC32, the
object's own sha256, or Content-MD5), and a damaged archive found while it is sent."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from influx_backupd.offsite.errors import Damaged
from influx_backupd.offsite.files import scan_dir, scan_tar
from influx_backupd.offsite.repo import Backup, Offsite
from influx_backupd.run.offsite import backup_of
from influx_backupd.store.record import RunRecord
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import age_identity, cold_backup, hot_backup, make_tar, make_tree
from tests.offsite.test_faults import _Throttling

MiB = 1 << 20


@pytest.fixture
def recording(moto: Endpoint) -> Iterator[_Throttling]:
    proxy = _Throttling(moto.url, fail=0)
    yield proxy
    proxy.server.shutdown()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _archive(tmp_path: Path) -> Path:
    files = {
        "meta/meta.db": os.urandom(5000),
        "data/db/rp/1/1.tsm": os.urandom(12 * MiB + 3),  # 3 parts of 5 MiB
        "wal/db/rp/1/_00001.wal": os.urandom(70_000),
    }
    return make_tar(tmp_path / "nightly-1.tar", make_tree(tmp_path / "t", files))


@pytest.mark.parametrize("mode", ["crc32", "md5", "crc32-encrypted"])
def test_every_upload_carries_a_checksum_of_its_body(
    moto: Endpoint, recording: _Throttling, tmp_path: Path, mode: str
) -> None:
    extra: dict[str, object] = {"transfer_checksum": mode.split("-")[0]}
    if mode.endswith("encrypted"):
        extra["encrypt_to"] = [age_identity(tmp_path)[1]]
    backup = cold_backup(_archive(tmp_path), "20261130T010000Z-0001")
    offsite = Offsite(moto.settings(endpoint_url=recording.url, **extra), key_file=tmp_path / "k")
    assert offsite.send(backup).complete
    puts = [(path, h, body) for method, path, h, body in recording.seen if method == "PUT" and body]
    assert len(puts) >= 6  # 2 small objects, 3 parts, the manifest (and the name key)
    by_kind = {"crc32": 0, "sha256": 0, "md5": 0}
    for path, headers, body in puts:
        # the body is covered by a checksum header, not by a signed sha256 of every byte
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD", path
        if "content-md5" in headers:
            assert headers["content-md5"] == _b64(hashlib.md5(body).digest()), path
            by_kind["md5"] += 1
        elif "x-amz-checksum-sha256" in headers:
            assert headers["x-amz-checksum-sha256"] == _b64(hashlib.sha256(body).digest()), path
            assert headers["x-amz-sdk-checksum-algorithm"] == "SHA256"  # object lock asks
            by_kind["sha256"] += 1
        else:
            assert headers["x-amz-checksum-crc32"] == _b64(zlib.crc32(body).to_bytes(4, "big"))
            assert headers["x-amz-sdk-checksum-algorithm"] == "CRC32"
            by_kind["crc32"] += 1
    if mode == "md5":
        assert by_kind == {"crc32": 0, "sha256": 0, "md5": len(puts)}
    elif mode == "crc32":
        # the two small files by the sha256 they are named by; the parts and manifest by CRC32
        assert by_kind == {"crc32": 4, "sha256": 2, "md5": 0}
    else:
        assert by_kind["md5"] == by_kind["sha256"] == 0
    starts = [h for m, p, h, _ in recording.seen if m == "POST" and p.endswith("?uploads")]
    assert starts and all(
        h.get("x-amz-checksum-algorithm") == ("CRC32" if mode != "md5" else None) for h in starts
    )


def test_a_damaged_archive_found_while_it_is_sent_gets_no_manifest(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    archive = _archive(tmp_path)
    good = cold_backup(archive, "20261130T010000Z-0002")
    wrong = "0" * 64  # the record's sha256 is not the archive's: damaged since it was written
    source = scan_tar(archive, wrong, lazy=True)
    assert all(not e.sha256 for e in source.files())  # only the headers read so far
    offsite = Offsite(endpoint.settings())
    with pytest.raises(Damaged, match="damaged, not sent"):
        offsite.send(Backup(good.id, good.job, good.kind, None, good.record, source))
    assert offsite.manifests() == []
    # the members hashed on the way are what an eager scan gives
    assert [e.sha256 for e in source.files()] == [e.sha256 for e in good.source.files()]
    assert Offsite(endpoint.settings()).send(good).complete


def test_the_whole_archive_is_hashed_again_only_when_its_proof_is_old(
    moto: Endpoint, tmp_path: Path
) -> None:
    archive = _archive(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    # the archive went bad after its run hashed it: one byte of the WAL file flipped
    data = bytearray(archive.read_bytes())
    at = data.rindex(b"\0" * 512) - 70_000  # inside the last member's data
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    now = time.time()
    offsite = Offsite(moto.settings())

    def record(id: str, finished: float, verified: float | None = None) -> RunRecord:
        return RunRecord(
            id, "nightly", "cold", status="ok", started_at=finished - 5, finished_at=finished,
            archive=str(archive), sha256=digest, verified_at=verified,
            verify_status="ok" if verified else None,
        )  # fmt: skip

    # proved a day and more ago (by its run, and by a verify): hashed whole, refused
    for old in (record("20261128T010000Z-0001", now - 2 * 86400),
                record("20261128T010000Z-0002", now - 3 * 86400, now - 25 * 3600)):  # fmt: skip
        with pytest.raises(Damaged, match="damaged, not sent"):
            offsite.send(backup_of(old))
    assert offsite.manifests() == []
    # proved an hour ago (a verify of an older backup counts too): each member hashed, the
    # whole archive not again; the object names are the hashes of the bytes sent
    recent = backup_of(record("20261128T010000Z-0003", now - 3 * 86400, now - 3600))
    assert offsite.send(recent).complete
    wal = next(e for e in recent.source.files() if e.path.endswith(".wal"))
    with recent.source.open(wal) as reader:
        assert wal.sha256 == hashlib.sha256(reader.read()).hexdigest()


def test_a_hot_dir_that_is_not_its_record_is_found_while_it_is_sent(
    moto: Endpoint, tmp_path: Path
) -> None:
    files = {f"20261130T010000Z.s{i}.tar.gz": os.urandom(300_000 + i) for i in range(4)}
    good = hot_backup(make_tree(tmp_path / "hot", files), "20261130T010000Z-0009")
    (tmp_path / "hot" / "20261130T010000Z.s2.tar.gz").write_bytes(os.urandom(300_002))
    source = scan_dir(tmp_path / "hot", good.source.sha256, lazy=True)
    offsite = Offsite(moto.settings())
    with pytest.raises(Damaged, match="damaged, not sent"):
        offsite.send(Backup(good.id, good.job, good.kind, None, good.record, source))
    assert offsite.manifests() == []
