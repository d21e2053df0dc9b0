"""Send backups to a real S3 endpoint (moto, rclone) and fetch them back, byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from influx_backupd.offsite.errors import IntegrityError, OffsiteError
from influx_backupd.offsite.files import scan_tar
from influx_backupd.offsite.repo import Offsite
from influx_backupd.run.offsite import load_known, save_known
from tests.offsite.conftest import Endpoint
from tests.offsite.helpers import cold_backup, hot_backup, make_tar, make_tree, sha256

MiB = 1 << 20


def _tree(root: Path, tag: bytes) -> Path:
    return make_tree(
        root,
        {
            "meta/meta.db": b"meta" * 1000 + tag,
            "data/db/autogen/1/000000001-000000001.tsm": os.urandom(3 * MiB),
            "data/db/autogen/1/000000002-000000001.tsm": os.urandom(11 * MiB + 7),  # 3 parts
            "data/db/autogen/1/empty.tsm": b"",
            "wal/db/autogen/1/_00001.wal": os.urandom(100_000) + tag,
            "influxdb.conf": b"[meta]\n",
        },
    )


def test_cold_archive_comes_back_byte_for_byte_and_only_new_files_travel(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    tree = _tree(tmp_path / "t1", b"one")
    first = make_tar(tmp_path / "nightly-1.tar", tree)
    offsite = Offsite(endpoint.settings())
    sent = offsite.send(cold_backup(first, "20261130T010000Z-aaaa"))
    assert sent.complete and not sent.already
    assert sent.bytes_skipped == 0
    assert sent.bytes_uploaded >= first.stat().st_size * 0.9
    # the next night: the TSM files are the same, the WAL and meta grew
    (tree / "wal/db/autogen/1/_00001.wal").write_bytes(os.urandom(200_000))
    (tree / "meta/meta.db").write_bytes(b"meta2" * 999)
    second = make_tar(tmp_path / "nightly-2.tar", tree)
    again = Offsite(endpoint.settings()).send(cold_backup(second, "20261201T010000Z-bbbb"))
    unchanged = 3 * MiB + 11 * MiB + 7 + len(b"[meta]\n")  # the TSM files and influxdb.conf
    assert again.bytes_skipped == unchanged
    new_bytes = 200_000 + len(b"meta2" * 999)
    assert again.bytes_uploaded <= 1.05 * new_bytes + 64 * 1024  # the manifest
    assert Offsite(endpoint.settings()).send(cold_backup(second, "20261201T010000Z-bbbb")).already

    out = tmp_path / "restored"
    out.mkdir()
    for path, bid in ((first, "20261130T010000Z-aaaa"), (second, "20261201T010000Z-bbbb")):
        got = Offsite(endpoint.settings()).fetch(bid, out)
        assert got.rebuilt == "bytes"
        assert got.path == out / f"nightly-{bid}.tar"  # the name the tool gives bid's
        assert got.path.read_bytes() == path.read_bytes()
    # GNU tar reads the rebuilt archive
    listing = subprocess.run(
        ["tar", "-tf", str(out / "nightly-20261130T010000Z-aaaa.tar")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "data/db/autogen/1/000000002-000000001.tsm" in listing.stdout.split()
    assert not endpoint.client().list_multipart_uploads(Bucket=endpoint.bucket).get("Uploads")


def test_hot_dir_comes_back_with_its_files_and_digest(endpoint: Endpoint, tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "hot-20261130T020000Z-cccc",
        {
            "20261130T020000Z.manifest": b"{}",
            "20261130T020000Z.meta": b"m" * 100,
            "20261130T020000Z.s1.tar.gz": os.urandom(6 * MiB),
        },
    )
    backup = hot_backup(src, "20261130T020000Z-cccc")
    Offsite(endpoint.settings()).send(backup)
    out = tmp_path / "out"
    out.mkdir()
    got = Offsite(endpoint.settings()).fetch("20261130T020000Z-cccc", out)
    assert got.rebuilt == "tree"
    for f in src.iterdir():
        back = got.path / f.name
        assert back.read_bytes() == f.read_bytes()
        assert back.stat().st_mtime == f.stat().st_mtime
        assert back.stat().st_mode == f.stat().st_mode


def test_a_changed_object_is_named_on_fetch_and_verify(moto: Endpoint, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "nightly-1.tar", _tree(tmp_path / "t", b"x"))
    offsite = Offsite(moto.settings())
    offsite.send(cold_backup(archive, "20261130T010000Z-dddd"))
    manifest = offsite.manifest("20261130T010000Z-dddd")
    victim = next(f for f in manifest.files if f.path.endswith("_00001.wal"))
    key = f"host-a/objects/{victim.object[:2]}/{victim.object}"
    data = bytearray(moto.client().get_object(Bucket=moto.bucket, Key=key)["Body"].read())
    data[10] ^= 1  # one bit flipped; moto checks nothing, the size stays
    moto.client().put_object(Bucket=moto.bucket, Key=key, Body=bytes(data))

    assert offsite.verify("20261130T010000Z-dddd").errors == []  # names and sizes only
    found = offsite.verify("20261130T010000Z-dddd", read_percent=100)
    assert len(found.errors) == 1 and key in found.errors[0] and victim.path in found.errors[0]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError) as caught:
        offsite.fetch("20261130T010000Z-dddd", out)
    assert key in str(caught.value) and victim.path in str(caught.value)
    assert list(out.iterdir()) == []  # no partial archive left
    assert sha256(archive)  # the local archive is untouched


def test_an_archive_written_by_gnu_tar_comes_back_byte_for_byte(
    moto: Endpoint, tmp_path: Path
) -> None:
    """Another writer (GNU tar, with long-name headers and a symlink) is rebuilt exactly too."""
    deep = "data/" + "/".join(["a-rather-long-directory-name"] * 5) + "/000000001-000000001.tsm"
    tree = make_tree(tmp_path / "t", {deep: os.urandom(300_000), "meta/meta.db": b"meta"})
    (tree / "meta" / "link").symlink_to("meta.db")
    archive = tmp_path / "nightly-gnu.tar"
    subprocess.run(
        ["tar", "--format=gnu", "-cf", str(archive), "-C", str(tree), "data", "meta"], check=True
    )
    offsite = Offsite(moto.settings())
    offsite.send(cold_backup(archive, "20261130T050000Z-9999"))
    out = tmp_path / "out"
    out.mkdir()
    assert offsite.fetch("20261130T050000Z-9999", out).path.read_bytes() == archive.read_bytes()
    (tmp_path / "as-tree").mkdir()
    tree_copy = offsite.fetch("20261130T050000Z-9999", tmp_path / "as-tree", tree=True)
    assert tree_copy.rebuilt == "tree" and tree_copy.notes
    assert (tree_copy.path / deep).read_bytes() == (tree / deep).read_bytes()
    assert os.readlink(tree_copy.path / "meta" / "link") == "meta.db"


def test_storage_class_and_server_side_encryption_are_asked_for(
    moto: Endpoint, tmp_path: Path
) -> None:
    files = {"data/big.tsm": os.urandom(6 * MiB), "meta/meta.db": b"m" * 100}
    archive = make_tar(tmp_path / "nightly-1.tar", make_tree(tmp_path / "t", files))
    offsite = Offsite(moto.settings(storage_class="STANDARD_IA", sse="AES256"))
    offsite.send(cold_backup(archive, "20261130T060000Z-5555"))
    client = moto.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=moto.bucket)["Contents"]]
    assert len(keys) == 3  # two objects (one of them multipart) and the manifest
    for key in keys:
        head = client.head_object(Bucket=moto.bucket, Key=key)
        assert head["StorageClass"] == "STANDARD_IA" and head["ServerSideEncryption"] == "AES256"


def test_files_known_from_the_last_backup_are_not_read_again(
    moto: Endpoint, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "t", {"data/1.tsm": os.urandom(MiB), "wal/_1.wal": b"w" * 999})
    first = make_tar(tmp_path / "nightly-1.tar", tree)
    offsite = Offsite(moto.settings())
    sent = cold_backup(first, "20261130T070000Z-0001")
    offsite.send(sent)
    # kept on the host by the sync that sent it, never read back from the bucket
    (tmp_path / "state").mkdir()
    save_known(tmp_path / "state", "nightly", sent)
    known = load_known(tmp_path / "state", "nightly")
    assert set(known) == {
        ("data/1.tsm", MiB, 1_700_000_000 + MiB % 1000),
        ("wal/_1.wal", 999, 1_700_000_999),
    }

    (tree / "wal/_1.wal").write_bytes(b"x" * 2000)  # grew: read again
    second = make_tar(tmp_path / "nightly-2.tar", tree)
    expected = sha256(second)
    # the TSM member's bytes changed behind a header that did not: proof it is not read
    data = bytearray(second.read_bytes())
    at = data.index((tree / "data/1.tsm").read_bytes()[:64])
    data[at] ^= 0xFF
    second.write_bytes(bytes(data))
    source = scan_tar(second, expected, known)
    assert source.notes and f"{MiB} bytes" in source.notes[0]
    by_path = {e.path: e.sha256 for e in source.files()}
    assert by_path["data/1.tsm"] == known[("data/1.tsm", MiB, 1_700_000_000 + MiB % 1000)]
    assert by_path["wal/_1.wal"] == hashlib.sha256(b"x" * 2000).hexdigest()
    # without what is known, the damaged archive is refused before anything is sent
    with pytest.raises(OffsiteError, match="not sent"):
        scan_tar(second, expected)
