"""The archive writer and safe extraction, on real files."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from influx_backupd.store.archive import (
    COLD_TOPS,
    ArchiveError,
    UnsafeArchive,
    check_written,
    extract_safely,
    scan_archive,
    write_archive,
)


def make_tree(root: Path) -> None:
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "meta.db").write_bytes(b"meta" * 100)
    shard = root / "data" / "db" / "autogen" / "1"
    shard.mkdir(parents=True)
    (shard / "000000001-000000001.tsm").write_bytes(os.urandom(3 << 20))
    (root / "data" / "db" / "empty").mkdir()
    (root / "influxdb.conf").write_text("[meta]\n")


def test_written_archive_is_readable_by_gnu_tar_with_relative_members_and_its_hash(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "src")
    dest = tmp_path / "out" / "a.tar"
    dest.parent.mkdir()
    result = write_archive(
        dest,
        [
            ("meta", tmp_path / "src" / "meta"),
            ("data", tmp_path / "src" / "data"),
            ("influxdb.conf", tmp_path / "src" / "influxdb.conf"),
        ],
    )
    check_written(result, COLD_TOPS)
    assert result.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert result.bytes == dest.stat().st_size
    assert dest.stat().st_mode & 0o777 == 0o600
    assert not list(dest.parent.glob("*.partial"))
    names = subprocess.run(
        ["tar", "-tf", str(dest)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert names == [
        "meta/",
        "meta/meta.db",
        "data/",
        "data/db/",
        "data/db/autogen/",
        "data/db/empty/",
        "data/db/autogen/1/",
        "data/db/autogen/1/000000001-000000001.tsm",
        "influxdb.conf",
    ]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(dest), "-C", str(out)], check=True)
    assert (out / "data/db/autogen/1/000000001-000000001.tsm").read_bytes() == (
        tmp_path / "src/data/db/autogen/1/000000001-000000001.tsm"
    ).read_bytes()


def test_a_failed_write_leaves_no_partial_and_no_archive(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    dest = tmp_path / "a.tar"

    def boom(_n: int) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_archive(dest, [("data", tmp_path / "src" / "data")], progress=boom)
    assert not dest.exists()
    assert not dest.with_name("a.tar.partial").exists()


def _tar_with(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("/etc/evil"), "absolute"),
        (_file("data/../../evil"), "'..'"),
        (_file("elsewhere/x"), "unexpected top-level"),
        (_link("data/l", "/etc/passwd", tarfile.SYMTYPE), "leaves the archive"),
        (_link("data/l", "../../x", tarfile.SYMTYPE), "leaves the archive"),
        (_link("data/h", "meta/x", tarfile.LNKTYPE), "hard links"),
        (_link("data/dev", "", tarfile.CHRTYPE), "device"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    archive = _tar_with(tmp_path, _file("meta/meta.db"), _file("data/x"), member)
    with pytest.raises(UnsafeArchive, match=message):
        scan_archive(archive, {"meta", "data"})
    targets = {"meta": tmp_path / "m", "data": tmp_path / "d"}
    with pytest.raises(UnsafeArchive):
        extract_safely(archive, targets, uid=None, gid=None)
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()
    assert not Path("/etc/evil").exists()


def test_a_truncated_archive_is_detected_by_the_scan(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    dest = tmp_path / "a.tar"
    write_archive(dest, [("meta", tmp_path / "src" / "meta"), ("data", tmp_path / "src" / "data")])
    data = dest.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError):
        scan_archive(cut, {"meta", "data"})


def test_extraction_sets_the_owner_and_keeps_content(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    make_tree(tmp_path / "src")
    dest = tmp_path / "a.tar"
    write_archive(dest, [("meta", tmp_path / "src" / "meta"), ("data", tmp_path / "src" / "data")])
    targets = {"meta": tmp_path / "m", "data": tmp_path / "d"}
    written = extract_safely(dest, targets, uid=nobody.pw_uid, gid=nobody.pw_gid)
    assert written == 2
    for path in [*targets["meta"].rglob("*"), *targets["data"].rglob("*"), *targets.values()]:
        assert path.lstat().st_uid == nobody.pw_uid, path
    assert (targets["data"] / "db/autogen/1/000000001-000000001.tsm").read_bytes() == (
        tmp_path / "src/data/db/autogen/1/000000001-000000001.tsm"
    ).read_bytes()
    assert (targets["data"] / "db" / "empty").is_dir()


def test_configured_dirs_and_files_that_are_symlinks_are_archived_as_what_they_point_to(
    tmp_path: Path,
) -> None:
    """data -> /mnt/big/data, a common layout: the archive holds data/ as a dir (restore
    refuses a top-level link, and any link to an absolute path); links inside stay links."""
    make_tree(tmp_path / "big")
    (tmp_path / "big" / "data" / "db" / "link").symlink_to("autogen")
    server = tmp_path / "server"
    server.mkdir()
    for name in ("meta", "data", "influxdb.conf"):
        (server / name).symlink_to(tmp_path / "big" / name)
    result = write_archive(
        tmp_path / "a.tar", [(name, server / name) for name in ("meta", "data", "influxdb.conf")]
    )
    check_written(result, COLD_TOPS)
    with tarfile.open(result.path) as tar:
        kinds = {m.name: m.type for m in tar.getmembers()}
    assert kinds["meta"] == kinds["data"] == tarfile.DIRTYPE
    assert kinds["influxdb.conf"] == tarfile.REGTYPE
    assert kinds["data/db/link"] == tarfile.SYMTYPE
    assert kinds["data/db/autogen/1/000000001-000000001.tsm"] == tarfile.REGTYPE
    scan_archive(result.path, COLD_TOPS)
    targets = {"meta": tmp_path / "m", "data": tmp_path / "d"}
    extract_safely(result.path, targets, uid=None, gid=None)
    assert (tmp_path / "d" / "db" / "autogen" / "1" / "000000001-000000001.tsm").is_file()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "db" / "abs").symlink_to("/etc"), "leaves the archive"),
        (lambda d: (d / "db" / "up").symlink_to("../../x"), "leaves the archive"),
    ],
    ids=["absolute-link-inside", "dotdot-link-inside"],
)
def test_a_written_archive_that_restore_would_refuse_fails_its_check(
    tmp_path: Path, make: Any, message: str
) -> None:
    """The check after writing applies restore's member rules: never recorded ok."""
    make_tree(tmp_path / "src")
    make(tmp_path / "src" / "data")
    result = write_archive(tmp_path / "a.tar", [("data", tmp_path / "src" / "data")])
    with pytest.raises(UnsafeArchive, match=f"restore would refuse it: .*{message}"):
        check_written(result, COLD_TOPS)


def test_a_configured_dir_that_leads_to_a_file_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "data").symlink_to(tmp_path / "file")
    result = write_archive(tmp_path / "a.tar", [("data", tmp_path / "data")])
    with pytest.raises(UnsafeArchive, match="data must be a directory"):
        check_written(result, COLD_TOPS)


def test_a_dir_that_cannot_be_listed_fails_the_write_rather_than_archive_it_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "src")
    unlistable = tmp_path / "src" / "data" / "db" / "autogen"
    scandir = os.scandir

    def failing(path: Any = ".") -> Any:
        if Path(path) == unlistable:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", failing)
    with pytest.raises(PermissionError):
        write_archive(tmp_path / "a.tar", [("data", tmp_path / "src" / "data")])
    assert not (tmp_path / "a.tar").exists()


def test_restored_modes_are_capped_and_leave_influxd_its_own_access(tmp_path: Path) -> None:
    """Modes come from the archive, which may have been re-tarred: never set-id nor writable
    by others (the cap), and, audit G, never less than the owner's read and write (a member of
    mode 0000 restored as such: influxd, running as that owner, served none of its points)."""
    dirs = tarfile.TarInfo("data/db")
    dirs.type, dirs.mode = tarfile.DIRTYPE, 0o000
    locked, data = _file("data/db/locked.tsm")
    locked.mode = 0o000
    setid, more = _file("data/db/setid.tsm")
    setid.mode = 0o6777
    archive = _tar_with(
        tmp_path, _file("meta/meta.db"), (dirs, None), (locked, data), (setid, more)
    )
    targets = {"meta": tmp_path / "m", "data": tmp_path / "d"}
    extract_safely(archive, targets, uid=None, gid=None)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "d").rglob("*")}
    assert mode == {"db": 0o700, "locked.tsm": 0o600, "setid.tsm": 0o644}


def test_more_members_without_data_in_a_row_than_one_write_takes(tmp_path: Path) -> None:
    """Audit F: 1,100 empty dirs in a row (a server's empty shard wal dirs after a restart,
    about 1,000 shards) were written as one writev of 1,100 headers: EINVAL past IOV_MAX, and
    every cold backup of that server failed after its stop."""
    wal = tmp_path / "src" / "wal"
    for n in range(1100):
        (wal / "db" / "autogen" / str(n)).mkdir(parents=True)
    (tmp_path / "src" / "meta").mkdir()
    (tmp_path / "src" / "meta" / "meta.db").write_bytes(b"m")
    dest = tmp_path / "a.tar"
    result = write_archive(dest, [("meta", tmp_path / "src" / "meta"), ("wal", wal)])
    assert result.members == 5 + 1100  # meta, meta.db, wal, db, autogen, the shards
    with tarfile.open(dest) as tar:
        assert len([m for m in tar.getmembers() if m.isdir()]) == 1104
    assert result.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
