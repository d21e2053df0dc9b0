"""The fast archive writer writes what tarfile would, hashes what it writes, keeps memory flat."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from influx_backupd.store.archive import (
    CHUNK,
    COLD_TOPS,
    ArchiveError,
    check_written,
    scan_archive,
    write_archive,
)


def make_tree(root: Path) -> None:
    shard = root / "data" / "db" / "autogen" / "1"
    shard.mkdir(parents=True)
    (root / "data" / "db" / "autogen" / "empty").mkdir()
    # sizes around the chunk and block boundaries, and one of several chunks with a ragged tail
    for i, size in enumerate((0, 1, 511, 512, 513, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 77)):
        (shard / f"{i:09d}-000000001.tsm").write_bytes(os.urandom(size))
    (shard / ("long-name-" + "x" * 120)).write_bytes(b"pax path header")
    (root / "data" / "db" / "link").symlink_to("autogen")
    os.chmod(shard / "000000001-000000001.tsm", 0o640)


def test_the_output_is_byte_for_byte_what_tarfile_writes_and_its_sha256_is_of_those_bytes(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "src")
    ours = write_archive(tmp_path / "ours.tar", [("data", tmp_path / "src" / "data")])
    check_written(ours, COLD_TOPS)
    reference = tmp_path / "reference.tar"
    with tarfile.open(reference, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tmp_path / "src" / "data", arcname="data", filter=None, recursive=False)
        for dirpath, dirnames, filenames in os.walk(tmp_path / "src" / "data"):
            dirnames.sort()
            for name in [*dirnames, *sorted(filenames)]:
                path = Path(dirpath, name)
                arcname = "data/" + str(path.relative_to(tmp_path / "src" / "data"))
                tar.add(path, arcname=arcname, recursive=False)
    data = (tmp_path / "ours.tar").read_bytes()
    assert data == reference.read_bytes()
    assert ours.sha256 == hashlib.sha256(data).hexdigest()
    assert ours.bytes == len(data)


def test_hard_links_are_stored_as_files_because_restore_refuses_link_members(
    tmp_path: Path,
) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "a.tsm").write_bytes(b"tsm data")
    os.link(src / "a.tsm", src / "b.tsm")  # as `influxd backup` snapshots leave them
    result = write_archive(tmp_path / "a.tar", [("data", src)])
    with tarfile.open(result.path) as tar:
        assert {m.name: m.isreg() and m.size == 8 for m in tar if not m.isdir()} == {
            "data/a.tsm": True,
            "data/b.tsm": True,
        }
    scan_archive(result.path, {"data"})  # the restore's safety scan accepts it


def test_a_file_that_shrinks_while_archived_fails_the_write_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    src = tmp_path / "data"
    src.mkdir()
    victim = src / "a.tsm"
    victim.write_bytes(os.urandom(4 * CHUNK))

    def shrink(_n: int) -> None:
        os.truncate(victim, CHUNK)

    with pytest.raises(ArchiveError, match="shrank"):
        write_archive(tmp_path / "a.tar", [("data", src)], progress=shrink)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
